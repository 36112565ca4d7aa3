"""LoRA adapters on colpali models: load one and check every key before merging it, and write a trained LoRA
(plus any other trained module) back as one peft adapter over the same base.

colpali-engine and transformers only log keys that land nowhere and leave the weights randomly initialised (or the
LoRA a no-op), which after a library upgrade gives silent wrong scores: here such a key is an error.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from harness.backbones import BackboneError
from harness.backbones.colpali import hub

ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_DIR = "base"  # where save() copies a local base model when the backbone asks for a self-contained folder


class CheckpointError(BackboneError):
    """A checkpoint that does not load completely (missing, unexpected or mis-shaped weights)."""


def conversion_mapping(cls: type) -> dict[str, str]:
    """The checkpoint key renames (model.layers -> language_model.layers, ...) of a colpali class, parents first.

    Passed explicitly to from_pretrained because BiQwen2, BiQwen2_5 and BiGemma3 (colpali-engine 0.3.18) compute
    it from an attribute transformers 5 removed and crash; and to peft, which renames adapter keys only if told.
    """
    mapping: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        mapping.update(klass.__dict__.get("_checkpoint_conversion_mapping") or {})
    return mapping


def adapter_file_keys(path: Path, mapping: dict[str, str]) -> set[str]:
    """Module-relative names of the weights in an adapter file, renamed as peft renames them on load."""
    from safetensors import safe_open

    keys = set()
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            key = key.removeprefix("base_model.model.")
            for pattern, replacement in mapping.items():
                key, n = re.subn(pattern, replacement, key)
                if n:
                    break
            keys.add(key)
    return keys


def merge_adapter(model: torch.nn.Module, source: str, revision: str | None) -> tuple[torch.nn.Module, set[str]]:
    """Load a LoRA adapter, check every key, merge it. Returns the plain model and the full weights it gave."""
    from peft import PeftConfig, PeftModel
    from peft.utils.other import ModulesToSaveWrapper

    config_file, weights = hub.fetch(source, "adapter_config.json", revision), hub.fetch(source, ADAPTER_WEIGHTS,
                                                                                         revision)
    if config_file is None or weights is None:
        raise CheckpointError(f"adapter {source}: adapter_config.json or {ADAPTER_WEIGHTS} missing")
    folder = str(config_file.parent)  # a local folder, or the Hub cache's snapshot folder
    peft_config = PeftConfig.from_pretrained(folder)
    peft_config.inference_mode = True
    mapping = conversion_mapping(type(model))
    file_keys = adapter_file_keys(weights, mapping)
    try:
        wrapped = PeftModel(model, peft_config)  # injects fresh LoRA layers (B = 0) named "default"
        # peft reports missing LoRA weights but not missing modules_to_save ones (it crashes or keeps the base's).
        missing = [f"{name}.{key}" for name, module in wrapped.get_base_model().named_modules()
                   if isinstance(module, ModulesToSaveWrapper)
                   for key in module.modules_to_save["default"].state_dict() if f"{name}.{key}" not in file_keys]
        unexpected: list[str] = []
        if not missing:
            result = wrapped.load_adapter(folder, "default", key_mapping=mapping, torch_device="cpu")
            missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    except (ValueError, RuntimeError) as exc:  # targets that match no module, tensors of the wrong shape
        raise CheckpointError(f"adapter {source} does not fit {type(model).__name__}: {exc}") from exc
    if missing or unexpected:
        problems = [f"{len(missing)} weights missing from {ADAPTER_WEIGHTS} (they would keep their initial "
                    f"values): {', '.join(missing[:20])}"] if missing else []
        problems += [f"{len(unexpected)} keys of {ADAPTER_WEIGHTS} match no module of the model: "
                     f"{', '.join(unexpected[:20])}"] if unexpected else []
        raise CheckpointError(f"adapter {source} does not fit {type(model).__name__}: {'; '.join(problems)}")
    full_weights = {k for k in file_keys if ".lora_" not in k and not k.endswith(".lora_magnitude_vector")}
    return wrapped.merge_and_unload(), full_weights


def tie_meta_weights(model: torch.nn.Module) -> None:
    """colpali-engine 0.3.18 under transformers 5 hides ColPali's tied ``model.lm_head.weight`` from the
    missing keys but never ties it, leaving it on the meta device (``.to(device)`` then fails): tie it."""
    if not any(p.is_meta for p in model.parameters()):
        return
    from transformers import PreTrainedModel

    for module in model.modules():
        if module is not model and isinstance(module, PreTrainedModel):
            module.tie_weights()
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise CheckpointError(f"{type(model).__name__}: weights never loaded (meta device): {meta[:20]}")


def tuner_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def write_adapter(backbone: Any, path: Path) -> dict[str, Any]:
    """Write a ColpaliBackbone's attached LoRA, plus every other trained module, as one peft adapter over its base.
    Returns the config fields that make the saved folder load it."""
    from peft import LoraConfig, get_peft_model_state_dict
    from peft.utils.other import AuxiliaryTrainingWrapper
    from safetensors.torch import save_file

    layers = tuner_layers(backbone.model)
    names = {n for layer in layers.values() for n in layer.active_adapters}
    if len(names) != 1:
        raise BackboneError(f"save() handles one active LoRA adapter, found {sorted(names)}")
    name = names.pop()
    # The peft config sits on whatever module a recipe wrapped: the backbone, its model, or (unknown to us)
    # an outer module, in which case the layers themselves say what it was.
    found = [c[name] for c in (getattr(backbone.model, "peft_config", None), getattr(backbone, "peft_config", None))
             if c and name in c]
    first = next(iter(layers.values()))
    config = copy.deepcopy(found[0]) if found else LoraConfig(
        r=first.r[name], lora_alpha=first.lora_alpha[name], use_rslora=first.use_rslora[name],
        use_dora=bool(first.use_dora[name]))
    if not isinstance(config, LoraConfig):
        raise BackboneError(f"save() writes LoRA adapters, not {type(config).__name__}")
    core = backbone.core
    previous = core.__dict__.get("peft_config")
    core.peft_config = {name: config}  # get_peft_model_state_dict reads the config from the module
    try:
        state = get_peft_model_state_dict(core, adapter_name=name)
    finally:
        if previous is None:
            del core.peft_config
        else:
            core.peft_config = previous
    wrappers = {n for n, m in core.named_modules() if isinstance(m, AuxiliaryTrainingWrapper)}
    managed = tuple(f"{n}." for n in [*layers, *wrappers])
    extra = set()
    for key, param in core.named_parameters():  # modules trained directly (a head with requires_grad)
        owner = key.rsplit(".", 1)[0]
        if param.requires_grad and not key.startswith(managed) and owner not in extra:
            extra.add(owner)
            state.update({f"{owner}.{k}": v for k, v in core.get_submodule(owner).state_dict().items()})
    # Exact module names: whatever pattern the recipe used (relative to some outer module), these reload.
    config.target_modules = sorted(layers)
    config.layers_to_transform = config.layers_pattern = None
    config.modules_to_save = sorted(wrappers | extra) or None
    config.base_model_name_or_path = backbone.base
    config.inference_mode = True
    config.save_pretrained(str(path))
    save_file({f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in state.items()},
              str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model = backbone.spec.model
    if hub.is_local(model):
        model = str(Path(model).expanduser().resolve())
        if backbone.embed_base:
            shutil.copytree(model, path / BASE_DIR, dirs_exist_ok=True)
            model = BASE_DIR
    adapters = [str(Path(a).expanduser().resolve()) if hub.is_local(a) else a for a in backbone.spec.adapter]
    return {"model": model, "adapter": [*adapters, "."]}
