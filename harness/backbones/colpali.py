"""The colpali family: any colpali-engine Col*/Bi* retriever, from a Hub id or a local folder.

Models, processors and query formatting come from colpali-engine; this module adds what it lacks:
- LoRA adapters (the checkpoint's own, when ``model`` is an adapter repo, then ``adapter``) are loaded with
  peft and merged, and every weight is checked: a key of the checkpoint that lands nowhere, or a weight of the
  model that no file provides, is an error. colpali-engine and transformers only log such keys and leave the
  weights randomly initialised (or the LoRA a no-op), which after a library upgrade gives silent wrong scores.
- save() writes a trained LoRA (plus any other trained module) as a peft adapter over the same base, or the
  full weights when no LoRA is attached (head-only or full training).
- fingerprint() of a Hub checkpoint pinned to commits hashes identities, not gigabytes of weights.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from harness.backbones import BackboneError
from harness.backbones.base import BACKBONE_FILE, Backbone, BackboneConfig, Page, Trainable, write_backbone_file

log = logging.getLogger(__name__)

# mteb's wrappers (colpali_models.py, colqwen_models.py, colsmol_models.py) format queries of these classes as
# "Query: " + text + 10 augmentation tokens, as the vidore checkpoints were trained; colpali-engine 0.3.18's
# processors default to no prefix. Every other class keeps its processor's own prefix.
MTEB_QUERY_PREFIX = {"ColPali": "Query: ", "ColQwen2": "Query: ", "ColQwen2_5": "Query: ", "ColIdefics3": "Query: "}
# Processors not named "<Model>Processor" or "<Model>_Processor".
PROCESSOR_OF = {"ColGemma3": "ColGemmaProcessor3", "BiGemma3": "BiGemmaProcessor3", "BiPaliProj": "BiPaliProcessor"}
# config.json model_type -> class, for a base whose "architectures" names no colpali class (a raw VLM under
# an adapter, e.g. Qwen/Qwen2.5-VL-3B-Instruct under colnomic). Bi* checkpoints of such bases need model_class.
CLASS_OF_MODEL_TYPE = {"qwen2_5_vl": "ColQwen2_5", "qwen2_vl": "ColQwen2", "paligemma": "ColPali",
                       "idefics3": "ColIdefics3", "qwen3_vl": "ColQwen3", "qwen3_5": "ColQwen3_5"}
LORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NON_TEXT_TOWERS = ("visual", "vision", "audio")  # path components that start so belong to other modalities
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_DIR = "base"  # where save() copies a local base model when the backbone asks for a self-contained folder


class CheckpointError(BackboneError):
    """A checkpoint that does not load completely (missing, unexpected or mis-shaped weights)."""


class ColpaliConfig(BackboneConfig):
    model: str  # Hub id or local folder: a full checkpoint, or a LoRA adapter repo (its base is loaded first)
    revision: str | None = None  # of `model`; a 40-hex commit pins it (see fingerprint)
    base_revision: str | None = None  # when `model` is an adapter: revision of the base it names
    model_class: str | None = None  # colpali_engine.models class; default: from the checkpoint's config
    processor_class: str | None = None  # default: the model class's processor
    processor: str | None = None  # where the processor files are; default: `model`
    adapter: list[str] = Field(default_factory=list)  # LoRA adapter(s), Hub ids or folders, merged in order
    torch_dtype: Literal["float32", "bfloat16", "float16"] | None = None  # default: float32 CPU, bfloat16 CUDA
    device: str = "auto"
    attn_implementation: str | None = None  # e.g. "flash_attention_2", "sdpa", "eager"
    query_prefix: str | None = None  # default: mteb's choice for the class, else the processor's
    query_augmentation_tokens: int | None = Field(None, ge=0)  # default: the processor's (10)
    max_pixels: int | None = Field(None, gt=0)  # Qwen-family processors: cap on pixels per page image

    @field_validator("adapter", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else value


# --- where files come from --------------------------------------------------------------------------


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _fetch(source: str, filename: str, revision: str | None) -> Path | None:
    """The local path of ``filename`` in a folder or Hub repo, or None if the checkpoint has no such file."""
    if _is_local(source):
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


def _read_json(source: str, filename: str, revision: str | None) -> dict[str, Any] | None:
    path = _fetch(source, filename, revision)
    return json.loads(path.read_text()) if path else None


def _is_pinned(revision: str | None) -> bool:
    return revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# --- classes ------------------------------------------------------------------------------------------


def _colpali_class(name: str) -> type:
    import colpali_engine.models as cm

    cls = getattr(cm, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(cm) if n[:3] in ("Col", "Bi") and not n.endswith(("Processor", "_Processor")))
        raise BackboneError(f"model_class {name!r} is not a colpali_engine class; known: {', '.join(known)}")
    return cls


def _infer_model_class(base: str, revision: str | None) -> str:
    config = _read_json(base, "config.json", revision) or {}
    import colpali_engine.models as cm

    for arch in config.get("architectures") or []:
        if hasattr(cm, arch):
            return arch
    if config.get("model_type") in CLASS_OF_MODEL_TYPE:
        return CLASS_OF_MODEL_TYPE[config["model_type"]]
    raise BackboneError(f"cannot tell the colpali_engine class of {base} (config.json architectures "
                        f"{config.get('architectures')}, model_type {config.get('model_type')!r}); set model_class")


def _processor_class_name(model_class: str) -> str:
    import colpali_engine.models as cm

    for name in (PROCESSOR_OF.get(model_class), f"{model_class}Processor", f"{model_class}_Processor"):
        if name and hasattr(cm, name):
            return name
    raise BackboneError(f"no processor class found for {model_class}; set processor_class")


# --- weights ------------------------------------------------------------------------------------------


def _conversion_mapping(cls: type) -> dict[str, str]:
    """The checkpoint key renames (model.layers -> language_model.layers, ...) of a colpali class, parents first.

    Passed explicitly to from_pretrained because BiQwen2, BiQwen2_5 and BiGemma3 (colpali-engine 0.3.18) compute
    it from an attribute transformers 5 removed and crash; and to peft, which renames adapter keys only if told.
    """
    mapping: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        mapping.update(klass.__dict__.get("_checkpoint_conversion_mapping") or {})
    return mapping


def _adapter_file_keys(path: Path, mapping: dict[str, str]) -> set[str]:
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


def _merge_adapter(model: torch.nn.Module, source: str, revision: str | None) -> tuple[torch.nn.Module, set[str]]:
    """Load a LoRA adapter, check every key, merge it. Returns the plain model and the full weights it gave."""
    from peft import PeftConfig, PeftModel
    from peft.utils.other import ModulesToSaveWrapper

    config_file, weights = _fetch(source, "adapter_config.json", revision), _fetch(source, ADAPTER_WEIGHTS, revision)
    if config_file is None or weights is None:
        raise CheckpointError(f"adapter {source}: adapter_config.json or {ADAPTER_WEIGHTS} missing")
    folder = str(config_file.parent)  # a local folder, or the Hub cache's snapshot folder
    peft_config = PeftConfig.from_pretrained(folder)
    peft_config.inference_mode = True
    mapping = _conversion_mapping(type(model))
    file_keys = _adapter_file_keys(weights, mapping)
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


def _tie_meta_weights(model: torch.nn.Module) -> None:
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


def _tuner_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


# --- the backbone -------------------------------------------------------------------------------------


class ColpaliBackbone(Backbone):
    """A colpali-engine retriever. All weights are frozen after loading: a recipe unfreezes what it trains
    (peft does this for LoRA; heads from ``trainable()``)."""

    family = "colpali"
    config_class = ColpaliConfig
    embed_base = False  # save(): copy a local base folder into the saved one (set by the tiny family)

    def __init__(self, config: BackboneConfig, spec: ColpaliConfig | None = None) -> None:
        super().__init__(config)
        self.spec: ColpaliConfig = spec or config  # type: ignore[assignment]
        self._load(self.spec)

    # --- loading ------------------------------------------------------------------------------
    def _load(self, spec: ColpaliConfig) -> None:
        adapter_config = _read_json(spec.model, "adapter_config.json", spec.revision)
        if adapter_config is not None and _fetch(spec.model, "config.json", spec.revision) is None:
            # `model` is an adapter repo (e.g. vidore/colqwen2.5-v0.2): load the base it names, then merge it.
            self.base, self.base_revision = adapter_config["base_model_name_or_path"], spec.base_revision
            chain = [(spec.model, spec.revision), *((a, None) for a in spec.adapter)]
        else:
            self.base, self.base_revision = spec.model, spec.revision
            chain = [(a, None) for a in spec.adapter]
        self.model_class = spec.model_class or _infer_model_class(self.base, self.base_revision)
        model_cls = _colpali_class(self.model_class)
        self.processor_class = spec.processor_class or _processor_class_name(self.model_class)
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto"
                              else spec.device)
        dtype = getattr(torch, spec.torch_dtype or ("bfloat16" if device.type == "cuda" else "float32"))

        kwargs: dict[str, Any] = {"dtype": dtype, "revision": self.base_revision, "output_loading_info": True}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        if device.type != "cpu":
            kwargs["device_map"] = str(device)  # load straight onto the accelerator, as mteb's wrappers do
        model, info = model_cls.from_pretrained(self.base, key_mapping=_conversion_mapping(model_cls), **kwargs)
        _tie_meta_weights(model)
        missing = set(info.get("missing_keys", ()))
        if info.get("mismatched_keys") or info.get("error_msgs"):
            raise CheckpointError(f"{self.base}: weights of the wrong shape for {self.model_class}: "
                                  f"{sorted(map(str, info.get('mismatched_keys') or ()))[:20]} "
                                  f"{list(info.get('error_msgs') or ())[:5]}")
        if info.get("unexpected_keys"):
            log.warning("%s: %d checkpoint keys unused by %s: %s", self.base, len(info["unexpected_keys"]),
                        self.model_class, sorted(info["unexpected_keys"])[:10])
        self.adapter_hashes: list[str] = []
        for source, revision in chain:
            model, provided = _merge_adapter(model, source, revision)
            missing -= provided  # an adapter's modules_to_save (e.g. custom_text_proj) completes the base
            self.adapter_hashes.append(_sha256(_fetch(source, ADAPTER_WEIGHTS, revision)))  # type: ignore[arg-type]
        if missing:
            raise CheckpointError(f"{self.base}: {len(missing)} weights of {self.model_class} are in no checkpoint "
                                  f"file (they would stay randomly initialised): {', '.join(sorted(missing)[:20])}")
        self.model = model.to(device).eval().requires_grad_(False)
        # ColPali/BiPali run a whole PaliGemmaForConditionalGeneration for its hidden states: its LM head would
        # compute [batch, tokens, 257k] logits nobody reads; one position is enough.
        inner = getattr(model, "model", None)
        self.logits_to_keep = type(inner).__name__.endswith("ForConditionalGeneration") and \
            "logits_to_keep" in inspect.signature(inner.forward).parameters

        processor_cls = _colpali_class(self.processor_class)
        self.processor = processor_cls.from_pretrained(spec.processor or spec.model, revision=(
            spec.revision if spec.processor in (None, spec.model) else None))
        if spec.max_pixels is not None:
            self._set_max_pixels(spec.max_pixels)
        # Queries: the processor's process_queries, with mteb's prefix for the classes mteb wraps that way.
        # A processor with its own process_queries (ColGemma3: a chat template, no suffix argument) formats
        # them itself; explicit overrides are then added to the text.
        self.own_query_format = "suffix" not in inspect.signature(self.processor.process_queries).parameters
        prefix = spec.query_prefix if spec.query_prefix is not None else (
            None if self.own_query_format else MTEB_QUERY_PREFIX.get(self.model_class))
        n_aug = spec.query_augmentation_tokens if spec.query_augmentation_tokens is not None else (
            0 if self.own_query_format else 10)  # 10: colpali-engine's default buffer
        self.query_suffix = getattr(self.processor, "query_augmentation_token", "") * n_aug
        if self.own_query_format:
            self.query_prefix = prefix or ""
        elif prefix is not None:
            self.processor.query_prefix = prefix  # an instance attribute shadows the class default
        self.lora_names = self._language_model_linears()

    def _set_max_pixels(self, max_pixels: int) -> None:
        image_processor = getattr(self.processor, "image_processor", None)
        size = getattr(image_processor, "size", None)
        if not hasattr(image_processor, "merge_size") or size is None or "longest_edge" not in size:
            raise BackboneError(f"max_pixels applies to Qwen-family processors, not {self.processor_class}")
        size["longest_edge"] = max_pixels  # Qwen2-VL image processors read max pixels here (transformers 5)
        image_processor.max_pixels = max_pixels  # and here in older releases

    def _language_model_linears(self) -> list[str]:
        names = [n for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)
                 and n.rsplit(".", 1)[-1] in LORA_LINEARS
                 and not any(part.startswith(NON_TEXT_TOWERS) for part in n.split("."))]
        if not names:
            raise BackboneError(f"{self.model_class}: found no language-model linear layers for LoRA")
        return names

    # --- inputs and forward ---------------------------------------------------------------------
    def query_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        if self.own_query_format:
            return dict(self.processor.process_queries([self.query_prefix + t + self.query_suffix for t in texts]))
        return dict(self.processor.process_queries(list(texts), suffix=self.query_suffix))

    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        no_image = [p.id for p in pages if p.image is None]
        if no_image:
            raise BackboneError(f"the colpali family needs page images; {len(no_image)} pages have only text "
                                f"(e.g. {no_image[:3]}): use the ocr-text family for a text corpus")
        inputs = dict(self.processor.process_images([p.image for p in pages]))
        inputs.pop("labels", None)  # PaliGemma's processor adds LM labels: they would only add a wasted LM loss
        return inputs

    def forward_queries(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(inputs)

    def forward_pages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(inputs)

    def _forward(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        core = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if getattr(core, "rope_deltas", None) is not None:
            core.rope_deltas = None  # Qwen-VL caches rotary offsets per batch shape (mteb clears it too)
        out = self.model(**inputs, **({"logits_to_keep": 1} if self.logits_to_keep else {}))
        if out.dim() == 2:  # Bi* models pool to one vector per item
            return out.unsqueeze(1), torch.ones(out.shape[0], 1, dtype=torch.bool, device=out.device)
        mask = inputs["attention_mask"].to(out.device).bool()
        # Padded rows can be 0/0 = NaN after the model's normalisation; NaN * 0 stays NaN, where() clears it.
        return torch.where(mask.unsqueeze(-1), out, out.new_zeros(())), mask

    # --- training -------------------------------------------------------------------------------
    def trainable(self) -> Trainable:
        # Full module paths under self.model: peft matches list entries as name suffixes, so they hit the same
        # layers whether a recipe wraps this backbone or its .model, and never the vision tower's q/k/v/mlp.
        head = getattr(self.model, "custom_text_proj", None)
        return Trainable(lora_targets=list(self.lora_names),
                         heads={"custom_text_proj": head} if isinstance(head, torch.nn.Module) else {})

    # --- saving ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        if any(_is_local(a) and Path(a).expanduser().resolve() == path.resolve() for a in self.spec.adapter):
            raise BackboneError(f"{path} holds an adapter this backbone is built on: save to a new folder")
        path.mkdir(parents=True, exist_ok=True)
        # Files of an earlier save would change what loads (transformers applies any adapter_config.json it
        # finds beside a config.json): clear them.
        for stale in [*path.glob("model*.safetensors*"), *(path / n for n in ("config.json", "adapter_config.json",
                                                                             ADAPTER_WEIGHTS))]:
            stale.unlink(missing_ok=True)
        shutil.rmtree(path / BASE_DIR, ignore_errors=True)
        fields = self.spec.model_dump()
        fields.update(model_class=self.model_class, processor_class=self.processor_class, processor=".")
        if _tuner_layers(self.model):
            fields.update(self._save_adapter(path))
        else:  # no LoRA: the weights as they are (head-only or full training included)
            self.model.save_pretrained(path)
            fields.update(model=".", revision=None, base_revision=None, adapter=[])
        self.processor.save_pretrained(path)
        write_backbone_file(path, "colpali", ColpaliConfig(**fields))

    def _save_adapter(self, path: Path) -> dict[str, Any]:
        """Write the attached LoRA, plus every other trained module, as one peft adapter over the base."""
        from peft import LoraConfig, get_peft_model_state_dict
        from peft.utils.other import AuxiliaryTrainingWrapper
        from safetensors.torch import save_file

        layers = _tuner_layers(self.model)
        names = {n for layer in layers.values() for n in layer.active_adapters}
        if len(names) != 1:
            raise BackboneError(f"save() handles one active LoRA adapter, found {sorted(names)}")
        name = names.pop()
        # The peft config sits on whatever module a recipe wrapped: this backbone, its model, or (unknown to us)
        # an outer module, in which case the layers themselves say what it was.
        found = [c[name] for c in (getattr(self.model, "peft_config", None), getattr(self, "peft_config", None))
                 if c and name in c]
        first = next(iter(layers.values()))
        config = copy.deepcopy(found[0]) if found else LoraConfig(
            r=first.r[name], lora_alpha=first.lora_alpha[name], use_rslora=first.use_rslora[name],
            use_dora=bool(first.use_dora[name]))
        if not isinstance(config, LoraConfig):
            raise BackboneError(f"save() writes LoRA adapters, not {type(config).__name__}")
        core = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
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
        config.base_model_name_or_path = self.base
        config.inference_mode = True
        config.save_pretrained(str(path))
        save_file({f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in state.items()},
                  str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        model = self.spec.model
        if _is_local(model):
            model = str(Path(model).expanduser().resolve())
            if self.embed_base:
                shutil.copytree(model, path / BASE_DIR, dirs_exist_ok=True)
                model = BASE_DIR
        adapters = [str(Path(a).expanduser().resolve()) if _is_local(a) else a for a in self.spec.adapter]
        return {"model": model, "adapter": [*adapters, "."]}

    @classmethod
    def load(cls, path: Path) -> ColpaliBackbone:
        path = Path(path)
        payload = json.loads((path / BACKBONE_FILE).read_text())
        fields = payload["config"]

        def here(value: str) -> str:  # save() writes folder-relative paths only for what it put in the folder
            return str(path / value) if value in (".", BASE_DIR) else value

        fields["model"] = here(fields["model"])
        fields["processor"] = here(fields["processor"]) if fields.get("processor") else None
        fields["adapter"] = [here(a) for a in fields.get("adapter", [])]
        spec = ColpaliConfig(**fields)
        return ColpaliBackbone(spec)

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hub checkpoints pinned to commits, untouched since loading: hash their identities and adapter files.
        Anything else (local folders, moving revisions, LoRA attached, weights trainable): every weight."""
        pinned = (not _is_local(self.spec.model) and _is_pinned(self.spec.revision)
                  and (self.base == self.spec.model or _is_pinned(self.base_revision))
                  and not any(_is_local(a) for a in self.spec.adapter))
        if not pinned or _tuner_layers(self.model) or any(p.requires_grad for p in self.parameters()):
            return super().fingerprint()
        h = hashlib.sha256(self.family.encode())
        identity = {"config": self.config.model_dump(mode="json"), "base": self.base,
                    "base_revision": self.base_revision, "model_class": self.model_class,
                    "adapters": self.adapter_hashes}
        h.update(json.dumps(identity, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        """colpali-<checkpoint name>, plus +<adapter name> for adapters on top (e.g. a saved trained LoRA)."""
        names = [Path(s).expanduser().resolve().name if _is_local(s) else s.rstrip("/").split("/")[-1]
                 for s in [self.spec.model, *self.spec.adapter]]
        return "colpali-" + "+".join(names)

