"""MaxSim, the one late-interaction score: evaluation, mining, validation and (with autograd) the losses.

s(q, d) = sum over the query's real tokens of max over the document's real tokens of q_i . d_j.

Padding: vectors are zero-padded to rectangles (real vectors are L2-normalised, so a zero row is padding and needs no
side channel through mteb). A padded query row scores 0 against everything and adds nothing. Padded document tokens
must never be scored (mteb's and colpali-engine's max_sim score them 0, a floor under negative similarities); a
document without any real token scores -1 per real query token (the lowest cosine).

The no-grad engine (``maxsim`` over a ``DocIndex``) spends its time in one kind of work, large matrix products:
- documents are sorted by length and packed into blocks of similar lengths, so the few long pages do not pad the
  many short ones;
- inside a block, a shorter document is filled with copies of its own first token instead of zeros: a copy cannot
  change a max, so no mask is applied and no -inf pass is made over the similarity tile;
- the queries' real token rows (padding rows are never multiplied: real questions padded to the longest one are
  mostly padding) and the block's token columns form one [rows, tokens] product per tile, reduced by a max over
  each document's columns and summed into each row's query; tiles are bounded (``budget`` floats), so memory is
  bounded and a corpus streams block by block;
- ``dtype=torch.bfloat16`` runs the products in bf16 (fast where the CPU has AVX512-BF16/AMX; scores then differ
  from fp32 by about 1e-2) and sums in fp32.
``score_matrix`` is the differentiable twin used by the training losses (same score on the same tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_BUDGET = 1 << 22  # floats per similarity tile (16 MiB in fp32); fewer, larger products win (benchmarks/)


def pad_vectors(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack [T_i, D] matrices into a zero-padded [N, max T, D] tensor."""
    width = max(x.shape[0] for x in items)
    out = items[0].new_zeros(len(items), width, items[0].shape[-1])
    for i, x in enumerate(items):
        out[i, : x.shape[0]] = x
    return out


def real_tokens(padded: torch.Tensor) -> list[torch.Tensor]:
    """The real (non-zero) rows of each [T, D] matrix of a zero-padded [N, T, D] tensor."""
    keep = padded.abs().sum(-1) != 0
    return [x[m] for x, m in zip(padded, keep, strict=True)]


class DocIndex:
    """Documents as length-sorted blocks ready for MaxSim: built once, scored against any number of query batches.

    ``docs``: a zero-padded [N, T, D] tensor or a list of [T_i, D] matrices (their rows all real). ``block_tokens``
    bounds the tokens (columns) of one block; blocks hold documents whose lengths differ little, so the filled
    columns (copies of a document's first token) stay few. ``consume=True`` empties the ``docs`` list (each entry
    set to None once copied) so that a corpus near the memory's size is held once while the index is built.
    """

    def __init__(self, docs: torch.Tensor | Sequence[torch.Tensor], *, block_tokens: int = 4096,
                 dtype: torch.dtype = torch.float32, consume: bool = False) -> None:
        items = real_tokens(torch.as_tensor(docs)) if isinstance(docs, torch.Tensor) else list(docs)
        # consume: ``docs`` (a list) gives up each matrix once it is copied, so a corpus is held once, not twice
        source = docs if consume and isinstance(docs, list) else None
        if not items:
            raise ValueError("DocIndex: no documents")
        self.size = len(items)
        self.dim = items[0].shape[-1]
        self.dtype = dtype
        lengths = torch.tensor([x.shape[0] for x in items])
        self.lengths = lengths
        self.empty = torch.nonzero(lengths == 0).flatten()  # scored -1 per query token
        order = [int(i) for i in torch.argsort(lengths, stable=True) if lengths[i] > 0]
        self.blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (document ids [n], tokens [n * L, D])
        start = 0
        while start < len(order):
            # ascending lengths: grow the block while n * (its longest) fits in block_tokens
            end = start + 1
            while end < len(order) and (end + 1 - start) * int(lengths[order[end]]) <= block_tokens:
                end += 1
            ids = order[start:end]
            width = int(lengths[ids[-1]])
            block = torch.empty(len(ids), width, self.dim, dtype=dtype)
            for row, i in enumerate(ids):
                x = items[i].to(dtype)
                block[row, : x.shape[0]] = x
                block[row, x.shape[0]:] = x[0]  # copies of a real token: never change the max
                if source is not None:
                    source[i] = items[i] = None
            self.blocks.append((torch.tensor(ids), block.view(-1, self.dim)))
            start = end

    def documents(self) -> list[torch.Tensor]:
        """Each document's real token vectors, in the order given: views into the blocks (no copy), so another
        index can share this one's memory."""
        out: list[torch.Tensor] = [torch.empty(0, self.dim, dtype=self.dtype)] * self.size
        for ids, tokens in self.blocks:
            rows = tokens.view(len(ids), -1, self.dim)
            for row, i in enumerate(ids.tolist()):
                out[i] = rows[row, : int(self.lengths[i])]
        return out

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for _, b in self.blocks)


def maxsim(queries: torch.Tensor, docs: torch.Tensor | Sequence[torch.Tensor] | DocIndex, *,
           budget: int = DEFAULT_BUDGET, dtype: torch.dtype | None = None) -> torch.Tensor:
    """MaxSim of zero-padded queries [Q, Tq, D] (or [Q, D]) against documents -> [Q, N] fp32 scores.

    ``docs``: a zero-padded [N, Td, D] tensor, a list of [T_i, D] matrices, or a prebuilt ``DocIndex`` (reuse it
    across query batches). ``budget``: floats per similarity tile. ``dtype``: the products' dtype when ``docs`` is
    not an index yet (an index keeps its own).
    """
    queries = torch.as_tensor(queries)
    if queries.dim() == 2:
        queries = queries.unsqueeze(1)
    if not isinstance(docs, DocIndex):
        docs = torch.as_tensor(docs) if isinstance(docs, torch.Tensor) else docs
        if isinstance(docs, torch.Tensor) and docs.dim() == 2:
            docs = docs.unsqueeze(1)
        docs = DocIndex(docs, dtype=dtype or torch.float32)
    q, tq, dim = queries.shape
    if dim != docs.dim:
        raise ValueError(f"maxsim: queries have {dim} dimensions, documents {docs.dim}")
    # only real query rows are multiplied (queries padded to the longest waste no products); owner[r]: row r's query
    real = queries.abs().sum(-1) != 0
    flat, owner = queries[real].to(docs.dtype), real.nonzero()[:, 0]
    scores = torch.empty(q, docs.size)
    if len(docs.empty):
        scores[:, docs.empty] = -real.sum(1, keepdim=True).float()
    # one tile buffer for the whole call: a fresh multi-MB product per tile costs page faults (slow on VMs)
    buffer = torch.empty(0, dtype=docs.dtype)
    for ids, tokens in docs.blocks:
        n = len(ids)
        width = tokens.shape[0] // n
        per = max(1, budget // tokens.shape[0])  # query rows per tile: [rows, n * width] within budget
        block = torch.zeros(q, n)
        for s in range(0, len(flat), per):
            rows = flat[s : s + per]
            if torch.is_grad_enabled() and (rows.requires_grad or tokens.requires_grad):
                sim = rows @ tokens.T  # a loss differentiates through it (out= buffers do not support autograd)
                block = block.index_add(0, owner[s : s + per], sim.view(len(rows), n, width).amax(-1).float())
                continue
            if buffer.numel() < len(rows) * tokens.shape[0]:
                buffer = torch.empty(len(rows) * tokens.shape[0], dtype=docs.dtype)
            sim = torch.mm(rows, tokens.T, out=buffer[: len(rows) * tokens.shape[0]].view(len(rows), -1))
            block.index_add_(0, owner[s : s + per], sim.view(len(rows), n, width).amax(-1).float())
        scores[:, ids] = block
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
