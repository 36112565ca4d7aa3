"""ColIntern's projection heads over a frozen backbone, and the backbone wrapper evaluation encodes with.

Frozen token states (``Featurizer``):
- ``ocr-text``: the text encoder's last hidden states; queries as the backbone tokenises them, pages as its OCR
  text chunks (the tokens of every chunk of a page, in order). Both sides are text tokens of the same encoder,
  so by default ONE head projects both (``shared``): the seed's text head applies to every text token and its
  vision head to image patches, and an OCR page has no image patches. Two independent random heads would put
  queries and pages in unrelated spaces, so the untrained model would score at random; a shared random head
  roughly preserves the encoder's own similarities (a random projection), so training starts near the base's
  ranking.
- ``colpali`` / ``tiny``: queries = the language model's last hidden state (the input of the checkpoint's own
  ``custom_text_proj``, captured by a hook), pages = the vision features (vision tower + merger/projector, not
  through the language model), as the seed does: separate text and vision heads.

Heads: ``Linear(hidden, dim, bias=False)`` per side (or one shared); outputs L2-normalised, scored by MaxSim
(``harness.retrieval.maxsim``: ``score_matrix`` in training, ``maxsim`` in evaluation). The states are frozen unless
the recipe trains LoRA on the encoder (``grad=True`` below).

Initialisation (``init``):
- ``pca``: the head starts as the fixed projection onto the top ``dim`` principal directions of the frozen,
  L2-normalised token states of the corpus pages (uncentred, so dot products are kept as well as ``dim`` directions
  can: ``pca_projection``); training then moves it by a residual that starts at zero. The untrained model ranks like
  the base backbone (its scores are the base's cosines measured in the top-``dim`` subspace). The trainable weight
  is stored as one matrix W = P + R (P the projection, R the residual): with weight decay 0 the optimiser's steps on
  R and on W are the same, the checkpoint format is unchanged, and the shared loop's relative weight change
  ||W - W0|| / ||W0|| is ||R|| / ||P||, the residual's size against the geometry it started from.
- ``random``: N(0, 0.02), the seed's initialisation (colpali/tiny, where the two sides are different spaces: the
  language model's output states and the vision features that enter it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.backbones import Backbone, Page
from harness.backbones.base import OcrStats, Trainable, to_device
from harness.io import atomic_path, atomic_write_json

HEADS_FILE, HEADS_CONFIG = "heads.pt", "colintern.json"


class Featurizer:
    """Token states, one [T_i, H] matrix per item (real tokens only); without gradient unless ``grad=True``
    (LoRA training: the states then depend on the adapter being trained). The backbone says what its states are
    (``Backbone.token_states`` / ``page_states``): nothing here depends on its family's model classes."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.kind = "ocr-text" if backbone.family == "ocr-text" else "colpali"
        self.query_dim = backbone.state_dim  # fails at once for a backbone without token states (Bi* models)

    @property
    def pages_through_encoder(self) -> bool:
        """Whether page states pass through the encoder LoRA adapts: OCR text does; the colpali family's pages
        are vision features (vision tower + merger), which never enter the language model LoRA sits on."""
        return self.backbone.pages_through_encoder

    def queries(self, texts: Sequence[str], batch_size: int = 32, grad: bool = False) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        with torch.set_grad_enabled(grad):
            for start in range(0, len(texts), batch_size):
                inputs = to_device(self.backbone.query_inputs(texts[start : start + batch_size]), self.backbone.device)
                states, mask = self.backbone.token_states(inputs)
                out.extend(s[m].float().cpu() for s, m in zip(states, mask, strict=True))
        return out

    def pages(self, pages: Sequence[Page], batch_size: int = 8, grad: bool = False) -> list[torch.Tensor]:
        self.backbone.prefetch(pages)
        out: list[torch.Tensor] = []
        with torch.set_grad_enabled(grad):
            for start in range(0, len(pages), batch_size):
                out.extend(self.backbone.page_states(pages[start : start + batch_size]))
        return out


class Heads(torch.nn.Module):
    """The query and page projections. ``shared``: one Linear for both sides (text tokens of one encoder on both
    sides, see the module docstring). It is registered under both names, so the state dict keeps the
    ``query_head.weight`` / ``page_head.weight`` keys of separate heads (one tensor), while ``parameters()``
    yields it once (the optimiser and the parameter count see one head)."""

    def __init__(self, query_dim: int, page_dim: int, dim: int = 128, shared: bool = False,
                 init: torch.Tensor | None = None) -> None:
        """``init``: a [dim, width] starting weight for every head (``pca_projection``); None: N(0, 0.02)."""
        super().__init__()
        if shared and query_dim != page_dim:
            raise ValueError(f"a shared head needs one input width, not query {query_dim} / page {page_dim}")
        self.shared = shared
        self.init = "random" if init is None else "pca"
        self.query_head = torch.nn.Linear(query_dim, dim, bias=False)
        self.page_head = self.query_head if shared else torch.nn.Linear(page_dim, dim, bias=False)
        for head in dict.fromkeys((self.query_head, self.page_head)):  # each distinct head once
            if init is None:
                torch.nn.init.normal_(head.weight, mean=0.0, std=0.02)
            else:
                if tuple(init.shape) != tuple(head.weight.shape):
                    raise ValueError(f"initial head weight {tuple(init.shape)} does not fit {tuple(head.weight.shape)}")
                with torch.no_grad():
                    head.weight.copy_(init)

    def spec(self) -> dict[str, Any]:
        return {"query_dim": self.query_head.in_features, "page_dim": self.page_head.in_features,
                "dim": self.query_head.out_features, "shared": self.shared, "init": self.init}

    def project_tokens(self, states: Sequence[torch.Tensor], side: str) -> torch.Tensor:
        """[T_i, H] states -> their L2-normalised projections, concatenated: [sum T_i, dim] (no padding)."""
        head = self.query_head if side == "query" else self.page_head
        return F.normalize(head(torch.cat(list(states)).to(head.weight.device)), dim=-1)

    def project(self, states: Sequence[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """[T_i, H] states -> (L2-normalised [B, T, dim] with zero padding, mask [B, T]). The head runs on the real
        tokens only (a batch of pages of very different lengths would otherwise project mostly padding)."""
        device = (self.query_head if side == "query" else self.page_head).weight.device
        width = max(len(s) for s in states)
        mask = torch.zeros(len(states), width, dtype=torch.bool)
        for i, s in enumerate(states):
            mask[i, : len(s)] = True
        mask = mask.to(device)
        vectors = self.project_tokens(states, side)
        out = vectors.new_zeros(len(states), width, vectors.shape[-1])
        return out.index_put((mask,), vectors), mask  # row-major: the order of the concatenated tokens

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        with atomic_path(folder / HEADS_FILE) as tmp:
            torch.save(self.state_dict(), tmp)
        atomic_write_json(folder / HEADS_CONFIG, {**self.spec(), **(extra or {})})

    @classmethod
    def load(cls, folder: Path) -> tuple[Heads, dict[str, Any]]:
        folder = Path(folder)
        meta = json.loads((folder / HEADS_CONFIG).read_text())
        # Checkpoints written before shared heads existed have no "shared" key: they are separate heads.
        heads = cls(meta["query_dim"], meta["page_dim"], meta["dim"], shared=bool(meta.get("shared", False)))
        heads.load_state_dict(torch.load(folder / HEADS_FILE, map_location="cpu", weights_only=True), strict=True)
        heads.init = meta.get("init", "random")  # how the trained weights started (older checkpoints: random)
        return heads, meta


def pca_projection(states: Sequence[torch.Tensor], dim: int, max_tokens: int = 200_000, seed: int = 0) -> torch.Tensor:
    """[dim, H]: orthonormal rows spanning the top ``dim`` principal directions (uncentred: the directions that keep
    the most of the tokens' dot products) of the L2-normalised token states ``states`` ([T_i, H] each). At most
    ``max_tokens`` tokens (a seeded sample) enter the fit. Signs are fixed (each row's largest entry positive), so the
    same states give the same projection."""
    x = F.normalize(torch.cat([s.float() for s in states]), dim=-1)
    if len(x) > max_tokens:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_tokens]]
    if dim > x.shape[1]:
        raise ValueError(f"pca: dim {dim} is more than the states' width {x.shape[1]}")
    values, vectors = torch.linalg.eigh((x.T @ x).double())  # ascending eigenvalues
    top = vectors[:, values.argsort(descending=True)[:dim]].T  # [dim, H]
    signs = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
    return (top * signs).float().contiguous()


class ColInternBackbone(Backbone):
    """A frozen backbone with ColIntern heads: the same tag and config as the backbone, its own fingerprint."""

    def __init__(self, inner: Backbone, heads: Heads) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.heads = heads
        self.family = inner.family
        self.config_class = inner.config_class
        self.featurizer = Featurizer(inner)

    def ocr_stats(self) -> OcrStats | None:
        return self.inner.ocr_stats()

    def query_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        return {"texts": list(texts)}

    def page_inputs(self, pages: Sequence[Page]) -> dict[str, Any]:
        return {"pages": list(pages)}

    def forward_queries(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads.project(self.featurizer.queries(inputs["texts"]), "query")

    def forward_pages(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads.project(self.featurizer.pages(inputs["pages"]), "page")

    def prefetch(self, pages: Sequence[Page]) -> None:
        self.inner.prefetch(pages)

    def trainable(self) -> Trainable:
        return Trainable(lora_targets=[], heads={"query_head": self.heads.query_head,
                                                 "page_head": self.heads.page_head})

    def save(self, path: Path) -> None:
        self.inner.save(Path(path) / "backbone")
        self.heads.save(Path(path))

    @classmethod
    def load(cls, path: Path) -> ColInternBackbone:
        from harness.backbones import load_backbone

        heads, _ = Heads.load(Path(path))
        return cls(load_backbone(Path(path) / "backbone"), heads)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"colintern")
        h.update(self.inner.fingerprint().encode())
        for name, tensor in sorted(self.heads.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return self.inner.describe()
