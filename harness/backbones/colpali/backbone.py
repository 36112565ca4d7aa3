"""The colpali backbone: any colpali-engine Col*/Bi* retriever, from a Hub id or a local folder.

Models, processors and query formatting come from colpali-engine; this adds what it lacks: every weight checked on
load (``adapters``), save() as a peft adapter over the same base or as full weights, and a fingerprint that hashes
identities, not gigabytes, for an untouched Hub checkpoint pinned to commits (``hub``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from harness.backbones import BackboneError
from harness.backbones.base import (
    BACKBONE_FILE,
    Backbone,
    BackboneConfig,
    Page,
    Trainable,
    to_device,
    write_backbone_file,
)
from harness.backbones.colpali import adapters, hub
from harness.backbones.colpali.adapters import ADAPTER_WEIGHTS, BASE_DIR, CheckpointError

log = logging.getLogger(__name__)

# mteb's wrappers (colpali_models.py, colqwen_models.py, colsmol_models.py) format queries of these classes as
# "Query: " + text + 10 augmentation tokens, as the vidore checkpoints were trained; colpali-engine 0.3.18's
# processors default to no prefix. Every other class keeps its processor's own prefix.
MTEB_QUERY_PREFIX = {"ColPali": "Query: ", "ColQwen2": "Query: ", "ColQwen2_5": "Query: ", "ColIdefics3": "Query: "}
LORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NON_TEXT_TOWERS = ("visual", "vision", "audio")  # path components that start so belong to other modalities


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
        adapter_config = hub.read_json(spec.model, "adapter_config.json", spec.revision)
        if adapter_config is not None and hub.fetch(spec.model, "config.json", spec.revision) is None:
            # `model` is an adapter repo (e.g. vidore/colqwen2.5-v0.2): load the base it names, then merge it.
            self.base, self.base_revision = adapter_config["base_model_name_or_path"], spec.base_revision
            chain = [(spec.model, spec.revision), *((a, None) for a in spec.adapter)]
        else:
            self.base, self.base_revision = spec.model, spec.revision
            chain = [(a, None) for a in spec.adapter]
        self.model_class = spec.model_class or hub.infer_model_class(self.base, self.base_revision)
        model_cls = hub.colpali_class(self.model_class)
        self.processor_class = spec.processor_class or hub.processor_class_name(self.model_class)
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto"
                              else spec.device)
        dtype = getattr(torch, spec.torch_dtype or ("bfloat16" if device.type == "cuda" else "float32"))

        kwargs: dict[str, Any] = {"dtype": dtype, "revision": self.base_revision, "output_loading_info": True}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        if device.type != "cpu":
            kwargs["device_map"] = str(device)  # load straight onto the accelerator, as mteb's wrappers do
        model, info = model_cls.from_pretrained(self.base, key_mapping=adapters.conversion_mapping(model_cls), **kwargs)
        adapters.tie_meta_weights(model)
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
            model, provided = adapters.merge_adapter(model, source, revision)
            missing -= provided  # an adapter's modules_to_save (e.g. custom_text_proj) completes the base
            self.adapter_hashes.append(hub.sha256_file(hub.fetch(source, ADAPTER_WEIGHTS, revision)))  # type: ignore[arg-type]
        if missing:
            raise CheckpointError(f"{self.base}: {len(missing)} weights of {self.model_class} are in no checkpoint "
                                  f"file (they would stay randomly initialised): {', '.join(sorted(missing)[:20])}")
        self.model = model.to(device).eval().requires_grad_(False)
        # ColPali/BiPali run a whole PaliGemmaForConditionalGeneration for its hidden states: its LM head would
        # compute [batch, tokens, 257k] logits nobody reads; one position is enough.
        inner = getattr(model, "model", None)
        self.logits_to_keep = type(inner).__name__.endswith("ForConditionalGeneration") and \
            "logits_to_keep" in inspect.signature(inner.forward).parameters

        processor_cls = hub.colpali_class(self.processor_class)
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
        self._modified = False
        self._loaded_marks = self._weight_marks()

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
        no_image = [p.id for p in pages if not p.has_image]
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

    @property
    def core(self) -> torch.nn.Module:
        """The colpali model itself, under a peft wrapper if a recipe put one around it."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _forward(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        core = self.core
        if getattr(core, "rope_deltas", None) is not None:
            core.rope_deltas = None  # Qwen-VL caches rotary offsets per batch shape (mteb clears it too)
        out = self.model(**inputs, **({"logits_to_keep": 1} if self.logits_to_keep else {}))
        if out.dim() == 2:  # Bi* models pool to one vector per item
            return out.unsqueeze(1), torch.ones(out.shape[0], 1, dtype=torch.bool, device=out.device)
        mask = inputs["attention_mask"].to(out.device).bool()
        # Padded rows can be 0/0 = NaN after the model's normalisation; NaN * 0 stays NaN, where() clears it.
        return torch.where(mask.unsqueeze(-1), out, out.new_zeros(())), mask

    # --- states for recipes that bring their own heads -------------------------------------------
    def _text_proj(self) -> torch.nn.Linear:
        head = getattr(self.core, "custom_text_proj", None)
        if not isinstance(head, torch.nn.Linear):
            raise ValueError(f"{self.describe()}: no custom_text_proj, cannot find the language model states "
                             "(a Bi* model pools them away): use a Col* model")
        return head

    @property
    def state_dim(self) -> int:
        return self._text_proj().in_features

    def token_states(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's last hidden states (the input of the checkpoint's own ``custom_text_proj``)."""
        seen: list[torch.Tensor] = []
        handle = self._text_proj().register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
        try:
            self._forward(inputs)
        finally:
            handle.remove()
        return seen[-1], inputs["attention_mask"].to(seen[-1].device).bool()

    def page_states(self, pages: Sequence[Page]) -> list[torch.Tensor]:
        """Vision features (vision tower + merger/projector), not through the language model, one per page."""
        inputs = to_device(self.page_inputs(pages), self.device)
        core, pixels = self.core, inputs["pixel_values"]
        if hasattr(core, "visual"):  # Qwen2-VL family: patches padded per image by colpali's processor
            grid = inputs["image_grid_thw"]
            offsets = (grid[:, 1] * grid[:, 2]).tolist()
            pixels = torch.cat([p[:n] for p, n in zip(pixels, offsets, strict=True)])
            feats = core.get_image_features(pixels, image_grid_thw=grid).pooler_output
        else:  # PaliGemma family: ColPali.model is PaliGemmaForConditionalGeneration
            inner = getattr(core, "model", core)
            inner = getattr(inner, "model", inner) if not hasattr(inner, "get_image_features") else inner
            feats = inner.get_image_features(pixels).pooler_output
        return [f.float().cpu() for f in feats]

    # --- training -------------------------------------------------------------------------------
    def trainable(self) -> Trainable:
        self.mark_modified()  # a recipe is about to train: from now on the fingerprint hashes the weights
        # Full module paths under self.model: peft matches list entries as name suffixes, so they hit the same
        # layers whether a recipe wraps this backbone or its .model, and never the vision tower's q/k/v/mlp.
        head = getattr(self.model, "custom_text_proj", None)
        return Trainable(lora_targets=list(self.lora_names),
                         heads={"custom_text_proj": head} if isinstance(head, torch.nn.Module) else {})

    # --- saving ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        if any(hub.is_local(a) and Path(a).expanduser().resolve() == path.resolve() for a in self.spec.adapter):
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
        if adapters.tuner_layers(self.model):
            fields.update(self._save_adapter(path))
        else:  # no LoRA: the weights as they are (head-only or full training included)
            self.model.save_pretrained(path)
            fields.update(model=".", revision=None, base_revision=None, adapter=[])
        self.processor.save_pretrained(path)
        write_backbone_file(path, "colpali", ColpaliConfig(**fields))

    def _save_adapter(self, path: Path) -> dict[str, Any]:  # harness.train.record.export_backbone looks for it
        return adapters.write_adapter(self, path)

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
    def _weight_marks(self) -> dict[str, tuple[int, int]]:
        """Storage and in-place version counter of every weight: any optimiser step, ``copy_``, ``+=`` or
        ``.data =`` on one changes its mark (peft's LoRA merge writes through ``.data``, which the counters miss:
        attaching LoRA goes through ``trainable()`` or shows as tuner layers, both of which set ``modified``)."""
        return {n: (t.data_ptr(), t._version) for n, t in self.state_dict(keep_vars=True).items()}

    def mark_modified(self) -> None:
        """Say that weights may differ from the checkpoint's (the fingerprint then hashes every weight)."""
        self._modified = True

    @property
    def modified(self) -> bool:
        """Whether any weight may differ from what was loaded. Sticky: once set, it stays set, so a trained and
        merged model never falls back to its base checkpoint's identity."""
        if not self._modified and (adapters.tuner_layers(self.model) or any(p.requires_grad for p in self.parameters())
                                   or self._weight_marks() != self._loaded_marks):
            self._modified = True
        return self._modified

    def fingerprint(self) -> str:
        """Hub checkpoints pinned to commits and untouched since loading: hash their identities and adapter files.
        Anything else (local folders, moving revisions, weights trained, merged or edited): every weight."""
        pinned = (not hub.is_local(self.spec.model) and hub.is_pinned(self.spec.revision)
                  and (self.base == self.spec.model or hub.is_pinned(self.base_revision))
                  and not any(hub.is_local(a) for a in self.spec.adapter))
        if not pinned or self.modified:
            return super().fingerprint()
        h = hashlib.sha256(self.family.encode())
        identity = {"config": self.config.model_dump(mode="json"), "base": self.base,
                    "base_revision": self.base_revision, "model_class": self.model_class,
                    "adapters": self.adapter_hashes}
        h.update(json.dumps(identity, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        """colpali-<checkpoint name>, plus +<adapter name> for adapters on top (e.g. a saved trained LoRA)."""
        names = [Path(s).expanduser().resolve().name if hub.is_local(s) else s.rstrip("/").split("/")[-1]
                 for s in [self.spec.model, *self.spec.adapter]]
        return "colpali-" + "+".join(names)

