"""Masked MaxSim over padded multi-vector batches.

mteb's own max_sim treats zero padding as real tokens (a padded document token scores 0, which beats real
tokens with negative similarity); here padded document tokens are masked out. Padding rows are all-zero
vectors (real vectors are L2-normalised), so the mask needs no side channel through mteb.
"""

from __future__ import annotations

import torch


def pad_vectors(items: list[torch.Tensor]) -> torch.Tensor:
    """Stack [T_i, D] matrices into a zero-padded [N, max T, D] tensor."""
    width = max(x.shape[0] for x in items)
    out = items[0].new_zeros(len(items), width, items[0].shape[-1])
    for i, x in enumerate(items):
        out[i, : x.shape[0]] = x
    return out


def maxsim(queries: torch.Tensor, docs: torch.Tensor, budget: int = 1 << 26) -> torch.Tensor:
    """s(q, d) = sum_i max_j q_i . d_j over real tokens; queries [Q, Tq, D], docs [N, Td, D] -> [Q, N].

    Documents are processed shortest first, in blocks trimmed to the block's longest document, so the
    padding of a few long pages costs nothing for the many short ones; each [Q, Tq, n, L] similarity
    block stays under ``budget`` floats.
    """
    queries = torch.as_tensor(queries).float()
    docs = torch.as_tensor(docs).float()
    if queries.dim() == 2:
        queries = queries.unsqueeze(1)
    if docs.dim() == 2:
        docs = docs.unsqueeze(1)
    q, tq, dim = queries.shape
    doc_pad = docs.abs().sum(-1) == 0  # [N, Td]
    lengths = (~doc_pad).sum(1)
    order = torch.argsort(lengths, stable=True)
    flat_q = queries.reshape(q * tq, dim)
    scores = queries.new_empty(q, docs.shape[0])
    start = 0
    while start < len(order):
        per_doc = q * tq  # floats per document token in the block
        n = max(1, budget // (per_doc * max(1, int(lengths[order[start]]))))
        # Sorted ascending: the block's last document is its longest; shrink the block to fit it.
        last = min(start + n, len(order)) - 1
        n = max(1, budget // (per_doc * max(1, int(lengths[order[last]]))))
        idx = order[start : start + n]
        width = max(1, int(lengths[idx].max()))
        d = docs[idx, :width]
        sim = (flat_q @ d.reshape(-1, dim).T).view(q, tq, len(idx), width)
        sim.masked_fill_(doc_pad[idx, :width][None, None], float("-inf"))
        # A padded query row (zero vector) scores 0 against real tokens and adds nothing; a document
        # without any real token gets -1 per query token (the lowest cosine) instead of -inf.
        best = torch.nan_to_num(sim.amax(-1), neginf=-1.0)  # [Q, Tq, n]
        scores[:, idx] = best.sum(1)
        start += len(idx)
    return scores


def score_matrix(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """Differentiable MaxSim for training: [Bq, Tq, D] queries against [C, Td, D] candidates -> [Bq, C].

    The same score as ``maxsim`` (evaluation) on the same vectors: padded candidate tokens are masked out (never a 0
    similarity that floors negative cosines), padded query tokens add nothing; sum over query tokens. Losses divide
    by the query length and a temperature themselves.
    """
    sim = torch.einsum("bqd,ctd->bcqt", q, d)
    sim = sim.masked_fill(~d_mask.bool()[None, :, None, :], float("-inf")).amax(dim=3)  # [Bq, C, Tq]
    sim = torch.nan_to_num(sim, neginf=-1.0)  # a candidate without real tokens: -1 per query token, as maxsim
    return sim.masked_fill(~q_mask.bool()[:, None, :], 0.0).sum(dim=2)
