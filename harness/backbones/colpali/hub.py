"""Where a colpali checkpoint's files come from (a local folder or the Hugging Face Hub at a revision), what pins
it, and which colpali-engine classes read it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from harness.backbones import BackboneError

# Processors not named "<Model>Processor" or "<Model>_Processor".
PROCESSOR_OF = {"ColGemma3": "ColGemmaProcessor3", "BiGemma3": "BiGemmaProcessor3", "BiPaliProj": "BiPaliProcessor"}
# config.json model_type -> class, for a base whose "architectures" names no colpali class (a raw VLM under
# an adapter, e.g. Qwen/Qwen2.5-VL-3B-Instruct under colnomic). Bi* checkpoints of such bases need model_class.
CLASS_OF_MODEL_TYPE = {"qwen2_5_vl": "ColQwen2_5", "qwen2_vl": "ColQwen2", "paligemma": "ColPali",
                       "idefics3": "ColIdefics3", "qwen3_vl": "ColQwen3", "qwen3_5": "ColQwen3_5"}


def is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def fetch(source: str, filename: str, revision: str | None) -> Path | None:
    """The local path of ``filename`` in a folder or Hub repo, or None if the checkpoint has no such file."""
    if is_local(source):
        path = Path(source).expanduser() / filename
        return path if path.is_file() else None
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise BackboneError(f"{source!r}: no such folder (and not a Hub id)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, revision=revision))
    except RemoteEntryNotFoundError:
        return None
    except Exception as exc:  # offline, unknown repo or revision: say which file of which checkpoint
        raise BackboneError(f"cannot fetch {filename} of {source}@{revision or 'main'} from the Hugging Face "
                            f"Hub ({type(exc).__name__}: {exc}); give a local folder instead") from None


def read_json(source: str, filename: str, revision: str | None) -> dict[str, Any] | None:
    path = fetch(source, filename, revision)
    return json.loads(path.read_text()) if path else None


def is_pinned(revision: str | None) -> bool:
    """A 40-hex commit: the files behind it never change (a branch or tag may move)."""
    return revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def colpali_class(name: str) -> type:
    import colpali_engine.models as cm

    cls = getattr(cm, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(cm) if n[:3] in ("Col", "Bi") and not n.endswith(("Processor", "_Processor")))
        raise BackboneError(f"model_class {name!r} is not a colpali_engine class; known: {', '.join(known)}")
    return cls


def infer_model_class(base: str, revision: str | None) -> str:
    config = read_json(base, "config.json", revision) or {}
    import colpali_engine.models as cm

    for arch in config.get("architectures") or []:
        if hasattr(cm, arch):
            return arch
    if config.get("model_type") in CLASS_OF_MODEL_TYPE:
        return CLASS_OF_MODEL_TYPE[config["model_type"]]
    raise BackboneError(f"cannot tell the colpali_engine class of {base} (config.json architectures "
                        f"{config.get('architectures')}, model_type {config.get('model_type')!r}); set model_class")


def processor_class_name(model_class: str) -> str:
    import colpali_engine.models as cm

    for name in (PROCESSOR_OF.get(model_class), f"{model_class}Processor", f"{model_class}_Processor"):
        if name and hasattr(cm, name):
            return name
    raise BackboneError(f"no processor class found for {model_class}; set processor_class")
