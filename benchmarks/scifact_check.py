"""Check the pooled MiniLM backbone against sentence-transformers and MTEB's published SciFact score.

Runs, in one process, on a BEIR SciFact folder:
  1. the harness (`harness eval` path: BeirFolderTask -> ocr-text pooled backbone -> mteb.evaluate), and
  2. a direct sentence-transformers computation (encode, cosine, top 1000, pytrec_eval nDCG@10),
and prints both scores and their difference. MTEB reports nDCG@10 = 0.6451 on the test split.

  python benchmarks/scifact_check.py ../shared/data/scifact_train --split train
  python benchmarks/scifact_check.py /path/to/scifact --split test
"""

from __future__ import annotations

import argparse
import tempfile
import time

import harness  # noqa: F401  (the torchvision fix runs before anything imports torchvision)

# isort: split
import pytrec_eval
import torch
from sentence_transformers import SentenceTransformer

from harness.backbones import build_backbone
from harness.backbones.ocr_text import DEFAULT_TEXT_ENCODER, resolve_encoder_path
from harness.evaluate.runner import evaluate_model
from models.base.model import load_model
from tasks.beir_folder import BeirFolderTask

PUBLISHED_TEST = 0.6451


def direct_st(task: BeirFolderTask, batch_size: int = 64) -> tuple[float, dict]:
    model = SentenceTransformer(resolve_encoder_path(DEFAULT_TEXT_ENCODER), device="cpu")
    docs = task.data.corpus
    doc_ids = list(docs)
    # mteb's convention for text corpora: title and text joined by a space
    texts = [(docs[d]["title"] + " " + docs[d]["text"]).strip() for d in doc_ids]
    qids = list(task.data.queries)
    d = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    q = model.encode([task.data.queries[i] for i in qids], batch_size=batch_size, convert_to_tensor=True,
                     normalize_embeddings=True)
    scores = q @ d.T
    top = torch.topk(scores, k=min(1000, len(doc_ids)), dim=1)
    run = {qid: {doc_ids[j]: float(s) for s, j in zip(top.values[i], top.indices[i], strict=True)}
           for i, qid in enumerate(qids)}
    ev = pytrec_eval.RelevanceEvaluator(task.data.qrels, {"ndcg_cut.10"})
    per_q = ev.evaluate(run)
    return sum(v["ndcg_cut_10"] for v in per_q.values()) / len(per_q), run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-chunks", type=int, default=1,
                    help="1 = truncate at 256 tokens like MTEB's run; 0 = every chunk (max-passage)")
    args = ap.parse_args()
    task = BeirFolderTask(args.folder, split=args.split, name=f"SciFactCheck_{args.split}")
    backbone = build_backbone("ocr-text", {"mode": "pooled", "max_chunks": args.max_chunks or None})
    encoder = load_model(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outcome = evaluate_model(encoder, [task], tmp, variant="base",
                                 backbone={"tag": backbone.describe()}, overwrite=True)[0]
        t_harness = time.perf_counter() - t0
    t0 = time.perf_counter()
    st_score, _ = direct_st(task)
    t_st = time.perf_counter() - t0
    print(f"split={args.split} queries={len(task.data.queries)} docs={len(task.data.corpus)} "
          f"max_chunks={args.max_chunks}")
    print(f"harness nDCG@10            {outcome.main_score:.4f}  ({t_harness:.0f}s)")
    print(f"sentence-transformers      {st_score:.4f}  ({t_st:.0f}s)")
    print(f"difference                 {outcome.main_score - st_score:+.5f}")
    if args.split == "test":
        print(f"MTEB published (test)      {PUBLISHED_TEST:.4f}  diff {outcome.main_score - PUBLISHED_TEST:+.4f}")


if __name__ == "__main__":
    main()
