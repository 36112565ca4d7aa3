"""How a multi-vector model searches a corpus at evaluation time: a flag of ``harness eval`` (``--search``) and a
field of run configs (``searches:``), part of each result's identity and of its leaderboard row.

- ``exhaustive``: float MaxSim against every page (mteb's own full-corpus search, scored by the harness's engine);
- ``binary-pooled[:R][@K]`` / ``binary-multi[:R][@K]`` / ``binary-cascade[:R][@K]``: ColQwen3VL's two-stage search
  (harness.retrieval.binary): a first stage over sign bits (pooled vote vectors, binary MaxSim over every token, or
  a cascade: binary MaxSim on the codes' first 64 bits over every page, then on the whole codes over its 10 x K x R
  best) keeps K x R candidates
  (R = rescore ratio, default 10), reranked by float MaxSim; the K best are returned (default 100, the depth of the
  saved rankings). mteb scores metrics up to @1000 from what a search returns: recall@1000 and MAP are then
  computed over K results, the @5/@10 scores are not affected.
It plugs into mteb through its index-backend seam (``SearchEncoderWrapper(model, index_backend=...)``). Tasks with
candidate lists (mteb's ``top_ranked``: reranking, the harness's within-document views) score every candidate with
float MaxSim whatever the strategy: there is no corpus to prune.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from mteb.models.search_wrappers import SearchEncoderWrapper

from harness.retrieval.binary import BinaryIndex, SearchStats

EXHAUSTIVE = "exhaustive"
_PATTERN = re.compile(r"^binary-(pooled|multi|cascade)(?::(\d+))?(?:@(\d+))?$")


class SearchSpecError(ValueError):
    pass


@dataclass(frozen=True)
class SearchSpec:
    kind: Literal["exhaustive", "binary"] = "exhaustive"
    first_stage: Literal["pooled", "multi", "cascade"] = "pooled"
    rescore_ratio: int = 10
    depth: int = 100

    @classmethod
    def parse(cls, text: str) -> SearchSpec:
        if text == EXHAUSTIVE:
            return cls()
        m = _PATTERN.match(text)
        if not m or any(g is not None and int(g) < 1 for g in m.groups()[1:]):
            raise SearchSpecError(f"search {text!r}: expected 'exhaustive' or 'binary-pooled|multi|cascade[:R][@K]' "
                                  "(R: rescore ratio, K: results returned; integers >= 1, default R 10, K 100)")
        return cls("binary", m.group(1), int(m.group(2) or 10), int(m.group(3) or 100))  # type: ignore[arg-type]

    @property
    def tag(self) -> str:
        """The strategy as it appears in revisions and row names ('' for exhaustive, the default)."""
        return "" if self.kind == EXHAUSTIVE else f"binary-{self.first_stage}-x{self.rescore_ratio}-k{self.depth}"


class BinaryTwoStageBackend:
    """mteb's ``IndexEncoderSearchProtocol`` over a ``BinaryIndex``."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.index: BinaryIndex | None = None
        self.ids: list[str] = []
        self.stats = SearchStats()

    def add_documents(self, embeddings: Any, idxs: list[str]) -> None:
        self.index = BinaryIndex(torch.as_tensor(embeddings))
        self.ids = list(idxs)

    def search(self, embeddings: Any, top_k: int, similarity_fn: Any, top_ranked: dict[str, list[str]] | None = None,
               query_idx_to_id: dict[int, str] | None = None) -> tuple[list[list[float]], list[list[int]]]:
        if self.index is None:
            raise ValueError("search before add_documents")
        queries = torch.as_tensor(embeddings).float()
        if top_ranked is not None and query_idx_to_id is not None:
            return self._rerank(queries, top_ranked, query_idx_to_id)
        scores, ids = self.index.search(queries, min(top_k, self.spec.depth), first=self.spec.first_stage,
                                        rescore_ratio=self.spec.rescore_ratio, stats=self.stats)
        values, indices = [], []
        for s, i in zip(scores.tolist(), ids.tolist(), strict=True):
            keep = [n for n, j in enumerate(i) if j >= 0]
            values.append([s[n] for n in keep])
            indices.append([i[n] for n in keep])
        return values, indices

    def _rerank(self, queries: torch.Tensor, top_ranked: dict[str, list[str]],
                query_idx_to_id: dict[int, str]) -> tuple[list[list[float]], list[list[int]]]:
        assert self.index is not None
        position = {d: n for n, d in enumerate(self.ids)}
        known = [[(n, position[d]) for n, d in enumerate(top_ranked[query_idx_to_id[i]]) if d in position]
                 for i in range(len(queries))]
        scores = self.index.rerank(queries, [[j for _, j in k] for k in known])
        # indices: positions in each query's candidate list, as mteb expects
        return [s.tolist() for s in scores], [[n for n, _ in k] for k in known]

    def clear(self) -> None:
        self.index, self.ids = None, []


def search_model(encoder: Any, spec: SearchSpec) -> Any:
    """What mteb evaluates: the encoder itself (exhaustive) or the encoder behind the two-stage index."""
    if spec.kind == EXHAUSTIVE:
        return encoder
    return SearchEncoderWrapper(encoder, index_backend=BinaryTwoStageBackend(spec))
