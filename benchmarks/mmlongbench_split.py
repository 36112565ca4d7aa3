"""A document-disjoint split of a page-retrieval BEIR folder (mmlongbench_dev) for the supervised reference row.

Documents (``metadata.doc_id``) are shuffled with a seed and halved; ``qrels/train.tsv`` holds the questions of the
first half, ``qrels/test.tsv`` those of the other half. The corpus is every page (the images are linked, not
copied), so a model trained on the train half is evaluated over the same pages as base, on questions about
documents it never saw a question of. ``harness run`` refuses to train on the evaluated split.

    python benchmarks/mmlongbench_split.py ../shared/data/mmlongbench_dev /work/runs/mmlb_split
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def split(src: Path, out: Path, seed: int = 0) -> dict[str, int]:
    queries = [json.loads(x) for x in (src / "queries.jsonl").read_text().splitlines() if x.strip()]
    docs = sorted({q["metadata"]["doc_id"] for q in queries})
    random.Random(seed).shuffle(docs)
    train_docs = set(docs[: len(docs) // 2])
    rows = [x.split("\t") for x in (src / "qrels" / "test.tsv").read_text().splitlines()[1:] if x.strip()]
    doc_of = {q["_id"]: q["metadata"]["doc_id"] for q in queries}
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    corpus = []
    for line in (src / "corpus.jsonl").read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            if doc.get("image"):
                doc["image"] = str((src / doc["image"]).resolve())
            corpus.append(json.dumps(doc))
    (out / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (out / "queries.jsonl").write_text((src / "queries.jsonl").read_text())
    counts = {}
    for name, keep in (("train", True), ("test", False)):
        kept = [r for r in rows if (doc_of[r[0]] in train_docs) == keep]
        (out / "qrels" / f"{name}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n"
                                                                                          for r in kept))
        counts[f"{name}_queries"] = len({r[0] for r in kept})
    counts["train_documents"], counts["test_documents"] = len(train_docs), len(docs) - len(train_docs)
    return counts


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(split(args.src, args.out, args.seed)))
