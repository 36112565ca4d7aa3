"""LoRA on a backbone's ``trainable().lora_targets`` (peft), its heads trainable, and the trained state on disk.

The adapter is injected into the backbone module itself (``peft.inject_adapter_in_model``), so the backbone's own
``forward_*`` run through it and its ``encode_*`` keep working for evaluation during training. The trainable
state (LoRA matrices + heads) is all a checkpoint needs: ``lora.json`` says how to re-attach it to the same
untrained backbone, ``trainable.safetensors`` holds the weights.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.backbones.base import Backbone

LORA_FILE, STATE_FILE = "lora.json", "trainable.safetensors"


class LoraSpec(BaseModel):
    """LoRA hyperparameters; every one explicit (the SynTR seed left alpha at peft's default by accident)."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(128, ge=1)
    alpha: float = Field(128.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    targets: list[str] | None = None  # None: the backbone's trainable().lora_targets
    train_heads: bool = True  # the backbone's trainable().heads (projections) train too


def attach_lora(backbone: Backbone, spec: LoraSpec) -> list[str]:
    """Freeze the backbone, inject LoRA, unfreeze LoRA and heads. Returns the target names used."""
    from peft import LoraConfig, inject_adapter_in_model

    trainable = backbone.trainable()
    targets = spec.targets if spec.targets is not None else trainable.lora_targets
    for p in backbone.parameters():
        p.requires_grad_(False)
    if spec.r and targets:
        config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                            bias="none")
        inject_adapter_in_model(config, backbone)  # sets requires_grad on lora_A / lora_B only
    if spec.train_heads:
        for head in trainable.heads.values():
            for p in head.parameters():
                p.requires_grad_(True)
    if not any(p.requires_grad for p in backbone.parameters()):
        raise ValueError(f"{backbone.describe()}: nothing to train (no LoRA targets matched, no heads)")
    return list(targets)


def has_lora(backbone: torch.nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in backbone.modules())


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def save_trainable(module: torch.nn.Module, folder: Path, spec: LoraSpec | None = None,
                   targets: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(module), str(folder / STATE_FILE), metadata={"format": "pt"})
    if spec is not None:
        payload = {**spec.model_dump(), "targets": targets if targets is not None else spec.targets}
        (folder / LORA_FILE).write_text(json.dumps(payload, indent=2))


def load_trainable(module: torch.nn.Module, folder: Path) -> None:
    """Load a trainable state; a trained weight the module lacks, or a trainable one the file lacks, is an error
    (a silently skipped adapter would evaluate the untrained model)."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / STATE_FILE))
    params = dict(module.named_parameters())
    unknown = sorted(set(state) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state)
    if unknown or missing:
        raise ValueError(f"{folder / STATE_FILE} does not fit {type(module).__name__}: "
                         f"unknown {unknown[:10]}, missing {missing[:10]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))


def reattach(backbone: Backbone, folder: Path) -> None:
    """On an untrained backbone: attach the LoRA described by ``folder/lora.json`` and load its weights."""
    spec = LoraSpec(**json.loads((Path(folder) / LORA_FILE).read_text()))
    attach_lora(backbone, spec)
    load_trainable(backbone, folder)


MERGED_FROM = "_merged_from"  # attribute naming the folder whose trained state a backbone already holds, merged


def merge_saved_lora(backbone: Backbone, folder: Path) -> None:
    """Put the adapter saved in ``folder`` into ``backbone`` and merge it; once per folder and backbone.

    ``backbone`` is either untrained (a fresh process: the adapter is re-attached from ``lora.json``) or the one a
    recipe just trained in this process (adapter still attached: the saved state is loaded into it). Both end in the
    same merged weights, hence the same fingerprint. Missing or mismatched weights are errors (``load_trainable``)."""
    if getattr(backbone, MERGED_FROM, None) == str(folder):
        return
    if has_lora(backbone):
        load_trainable(backbone, folder)
    else:
        reattach(backbone, folder)
    merge_lora(backbone)
    setattr(backbone, MERGED_FROM, str(folder))


def merge_lora(module: torch.nn.Module) -> int:
    """Fold every LoRA layer into its base weight and put the plain layer back; returns how many were merged.
    Evaluation is then as fast as the base model, and the backbone's own save() writes ordinary weights."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, layer in list(module.named_modules()):
        if isinstance(layer, LoraLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, layer.get_base_layer())
            merged += 1
    for p in module.parameters():
        p.requires_grad_(False)
    return merged


@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` as its base model: every LoRA layer's adapter off, eval mode; all restored afterwards.
    A merged adapter cannot be switched off (its delta is inside the base weight): that is an error."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    if any(layer.merged for layer in layers):
        raise RuntimeError("the LoRA adapter is merged into the base weights: it cannot be disabled (load the "
                           "adapter without merging to answer with the base model)")
    flags = {name: p.requires_grad for name, p in module.named_parameters()}  # peft's toggles change them
    disabled = [layer.disable_adapters for layer in layers]
    was_training = module.training
    module.eval()
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, off in zip(layers, disabled, strict=True):
            layer.enable_adapters(not off)
        for name, p in module.named_parameters():
            p.requires_grad_(flags[name])
        module.train(was_training)
