"""Make torchvision importable beside a CPU torch whose build it does not match.

On machines where pip only offers a CUDA-linked torchvision next to a CPU torch, ``import torchvision``
fails with "operator torchvision::nms does not exist", and with it transformers' Qwen2-VL image processor,
peft and colpali_engine. This module is imported first by ``harness/__init__.py``. Where torch and
torchvision match (a normal GPU machine) it does nothing.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)
_APPLIED = False


def _torchvision_ops_registered() -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def fix_torchvision() -> str:
    """Register torchvision's operator schemas when its C++ library cannot load. Returns what it did."""
    global _APPLIED
    if _APPLIED:
        return "already applied"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "torchvision not installed"
    import torch

    if _torchvision_ops_registered():
        return "nothing to do"
    try:
        # The matching-build case: loading _C.so registers the real operators.
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
        _APPLIED = True
        return "loaded torchvision/_C.so"
    except (OSError, RuntimeError) as exc:
        log.debug("torchvision/_C.so does not load (%s); registering its schemas only", exc)
    # torchvision registers these two schemas unconditionally at import (torchvision/_meta_registrations.py);
    # defining them lets the import succeed. Its C++ kernels stay unavailable: nothing here uses them.
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_LIBRARY"] = lib  # keep the registration alive
    _APPLIED = True
    return "registered torchvision schemas"


fix_torchvision()
