"""The colpali family: any colpali-engine Col*/Bi* retriever, from a Hub id or a local folder.

- ``hub``: where a checkpoint's files come from, what pins it, which colpali-engine classes read it;
- ``adapters``: LoRA adapters checked key by key and merged on load, and written back by save();
- ``backbone``: ``ColpaliConfig`` and ``ColpaliBackbone`` (inputs, forward, states, save/load, fingerprint).
"""

from harness.backbones.colpali.adapters import ADAPTER_WEIGHTS, BASE_DIR, CheckpointError
from harness.backbones.colpali.backbone import MTEB_QUERY_PREFIX, ColpaliBackbone, ColpaliConfig

__all__ = ["ADAPTER_WEIGHTS", "BASE_DIR", "MTEB_QUERY_PREFIX", "CheckpointError", "ColpaliBackbone", "ColpaliConfig"]
