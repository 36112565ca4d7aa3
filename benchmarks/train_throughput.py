"""Training throughput of each recipe's objective on the shared loop, against the machine's bound, in one process.

For each recipe shape (its fine-tuning mode, loss and example layout) on the OCR-text pooled backbone:
- loop: ``run_loop`` for ``--steps`` optimizer steps; examples/s as every recipe records it (examples seen / step
  time, validation apart), and the validation share (validation seconds / training seconds, with the recipes'
  default of 5 evaluations + step 0 over a ``--val-pool``-page pool);
- bound: a bare forward and backward pass of the encoder over the very same batches (the same token ids, chunked and
  grouped by length as training does), with a trivial loss, no loop, optimizer, scoring or collation;
- ratio = loop step time / bound time (1.0 = no overhead).

    python benchmarks/train_throughput.py ../shared/data/mmlongbench_dev --steps 8 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

import harness  # noqa: F401  (torchvision fix, OMP policy)
from harness.backbones import build_backbone
from harness.backbones.base import Page
from harness.data.beir import read_beir_folder
from harness.train import (
    ContrastiveCollator,
    ContrastiveObjective,
    Example,
    LoopSpec,
    LoraSpec,
    PageValidator,
    attach_lora,
    run_loop,
)
from harness.train.objectives import to_device
from harness.train.record import prepare_finetune

RECIPES = {  # name: (fine-tuning, loss, negatives per example, synthetic passages per example)
    "syntr": ("lora", "pairwise", 3, 0),
    "syntriever-s1": ("full", "infonce", 1, 2),
    "supervised": ("full", "infonce", 0, 0),
}


def pages_of(folder: Path, limit: int) -> tuple[list[Page], dict[str, str], dict[str, list[str]]]:
    data = read_beir_folder(folder, "test", check_images=False)
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    ids = sorted(data.corpus)[:limit]
    raw = []
    for i in ids:
        doc = data.corpus[i]
        from PIL import Image

        raw.append(Page(i, image=Image.open(doc["image"]).convert("RGB") if doc.get("image") else None,
                        text=" ".join(x for x in (doc.get("title"), doc.get("text")) if x) or None))
    texts = backbone.page_texts(raw)
    pages = [Page(p.id, text=t) for p, t in zip(raw, texts, strict=True)]
    qrels = {q: [d for d in r if d in set(ids)] for q, r in data.qrels.items()}
    return pages, {q: data.queries[q] for q in qrels if qrels[q]}, {q: r for q, r in qrels.items() if r}


def examples_for(recipe: str, pages: list[Page], queries: dict[str, str], qrels: dict[str, list[str]],
                 rng: random.Random) -> list[Example]:
    _, _, n_neg, n_syn = RECIPES[recipe]
    by_id = {p.id: p for p in pages}
    out = []
    for q, text in queries.items():
        pos = [by_id[d] for d in qrels[q]]
        syn = [Page(f"{q}:syn{j}", text=(rng.choice(pages).text or "")[:400]) for j in range(n_syn)]
        negs = rng.sample([p for p in pages if p.id not in qrels[q]], n_neg)
        out.append(Example(text, pos + syn[:1], syn[1:] + negs))
    return out


def bound_seconds(backbone: object, batches: list[dict]) -> float:
    """A bare forward + backward of the encoder over the same chunks, grouped by length as training does."""
    enc = backbone.encoder  # type: ignore[attr-defined]
    start = time.perf_counter()
    for batch in batches:
        for side in (batch["query"], batch["pages"]):
            inputs = to_device(side, backbone.device)  # type: ignore[attr-defined]
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            lengths = mask.sum(1)
            order = torch.argsort(lengths, descending=True)
            total = 0
            for s in range(0, len(order), backbone.config.chunk_batch):  # type: ignore[attr-defined]
                idx = order[s : s + backbone.config.chunk_batch]  # type: ignore[attr-defined]
                width = int(lengths[idx].max())
                out = enc(input_ids=ids[idx, :width], attention_mask=mask[idx, :width]).last_hidden_state
                total = total + out.sum()
            total.backward()
    return time.perf_counter() - start


def measure(recipe: str, folder: Path, args: argparse.Namespace) -> dict:
    rng = random.Random(0)
    pages, queries, qrels = pages_of(folder, args.pages)
    qids = sorted(queries)
    rng.shuffle(qids)
    val_ids, train_ids = qids[: args.val_queries], qids[args.val_queries :]
    examples = examples_for(recipe, pages, {q: queries[q] for q in train_ids}, qrels, rng)
    mode, loss, _, _ = RECIPES[recipe]
    backbone = build_backbone("ocr-text", {"mode": "pooled"})
    if mode == "lora":
        attach_lora(backbone, LoraSpec(r=128, alpha=128, dropout=0.1))
    else:
        prepare_finetune(backbone, "full", LoraSpec())
    collator = ContrastiveCollator(backbone)
    validator = PageValidator(backbone, {q: queries[q] for q in val_ids}, pages[: args.val_pool],
                              {q: {d: 1 for d in qrels[q]} for q in val_ids})
    spec = LoopSpec(steps=args.steps, batch_size=args.batch_size, lr=2e-5, min_val_queries=1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_loop(ContrastiveObjective(backbone, loss), examples, collator, spec, Path(tmp), validator)
    # the same batch shapes: consecutive slices of the examples (the loop shuffles; shapes are alike)
    batches = [collator(examples[i : i + args.batch_size]) for i in range(0, args.steps * args.batch_size,
                                                                          args.batch_size)][: args.steps]
    bound = bound_seconds(backbone, batches)
    step_s = result.train_s / result.steps
    return {"recipe": recipe, "steps": result.steps, "examples_per_s": round(result.examples_per_s, 2),
            "step_s": round(step_s, 3), "bound_step_s": round(bound / len(batches), 3),
            "ratio_to_bound": round(step_s / (bound / len(batches)), 2),
            "validation_share": round(result.val_s / result.train_s, 3), "val_s": round(result.val_s, 1),
            "train_s": round(result.train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a BEIR folder with page images or texts and test qrels")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--val-queries", type=int, default=30)
    ap.add_argument("--val-pool", type=int, default=100)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    args = ap.parse_args()
    torch.manual_seed(0)
    for recipe in args.recipes:
        print(json.dumps(measure(recipe, args.folder, args)), flush=True)


if __name__ == "__main__":
    main()
