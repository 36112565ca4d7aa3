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

    Processes documents in blocks so that the [Q, n, Tq, Td] similarity block stays under ``budget`` floats.
    """
    queries = torch.as_tensor(queries).float()
    docs = torch.as_tensor(docs).float()
    if queries.dim() == 2:
        queries = queries.unsqueeze(1)
    if docs.dim() == 2:
        docs = docs.unsqueeze(1)
    doc_pad = docs.abs().sum(-1) == 0  # [N, Td]
    q, tq = queries.shape[:2]
    n, td = docs.shape[:2]
    block = max(1, budget // max(1, q * tq * td))
    scores = queries.new_empty(q, n)
    for start in range(0, n, block):
        d = docs[start : start + block]
        sim = torch.einsum("qid,njd->qnij", queries, d)
        sim = sim.masked_fill(doc_pad[start : start + block][None, :, None, :], float("-inf"))
        best = sim.max(-1).values  # [Q, n, Tq]
        # Padded query rows are zero vectors: their best similarity is 0 and adds nothing.
        scores[:, start : start + block] = best.clamp_min(-1e4).masked_fill(best == float("-inf"), 0).sum(-1)
    return scores
