"""Judge quality on real data: ROC AUC of each judge's score, relevant vs non-relevant pages, on mmlongbench_dev.

Real questions and their evidence pages (qrels) against two kinds of negatives: other pages of the SAME document
(hard: same topic and vocabulary) and pages of OTHER documents. Sampling is page-major with a fixed seed: for each
sampled evidence page, its own questions (positives), questions of the same document it does not answer, and
questions of other documents; a page is then read once for all its questions (llama.cpp reuses the cached prefix).
Pairwise (both orders averaged) compares each question's evidence page with one same-document and one
other-document page; its "AUC" is the share of such comparisons it gets right (ties count half), which is what AUC
measures for pointwise scores. Results are stored (resumable) under cache/synth/; the table is printed.

  python benchmarks/synth_judges.py [--data ../shared/data/mmlongbench_dev] [--pages 40] [--pairwise 24]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import harness  # noqa: F401  (torchvision fix first)

# isort: split
from sklearn.metrics import roc_auc_score

from harness.data.beir import read_beir_folder
from harness.synth import operations as ops
from harness.synth.backends import BackendSpec, make_backend
from harness.synth.pages import load_pages
from harness.synth.parsing import GRADES
from harness.synth.store import SynthStore

ROOT = Path(__file__).resolve().parent.parent


def sample(folder_path: Path, n_pages: int, per_kind: int, n_pairwise: int, seed: int) -> tuple:
    folder = read_beir_folder(folder_path, "test", check_images=False)
    doc_of = {}
    for line in (folder_path / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        doc_of[row["_id"]] = row["metadata"]["doc_id"]
    rel_pages = defaultdict(set)  # page -> queries it answers
    for q, docs in folder.qrels.items():
        for d in docs:
            rel_pages[d].add(q)
    q_doc = {q: doc_of[next(iter(docs))] for q, docs in folder.qrels.items()}
    rng = random.Random(seed)
    pages = rng.sample(sorted(rel_pages), min(n_pages, len(rel_pages)))
    triples = []  # (query, page, kind) kind: pos | same | other
    for p in pages:
        triples += [(q, p, "pos") for q in sorted(rel_pages[p])]
        same = sorted(q for q in folder.queries if q_doc[q] == doc_of[p] and p not in folder.qrels[q])
        other = sorted(q for q in folder.queries if q_doc[q] != doc_of[p])
        triples += [(q, p, "same") for q in rng.sample(same, min(per_kind, len(same)))]
        triples += [(q, p, "other") for q in rng.sample(other, min(per_kind, len(other)))]
    pair_rows = []  # (query, evidence page, negative page, kind)
    for q in rng.sample(sorted(folder.qrels), min(n_pairwise, len(folder.qrels))):
        pos = sorted(folder.qrels[q])[0]
        same = sorted(d for d in folder.corpus if doc_of[d] == q_doc[q] and d not in folder.qrels[q])
        other = sorted(d for d in folder.corpus if doc_of[d] != q_doc[q])
        if same:
            pair_rows.append((q, pos, rng.choice(same), "same"))
        pair_rows.append((q, pos, rng.choice(other), "other"))
    return folder, triples, pair_rows


def auc(scores: list[float], labels: list[int]) -> float:
    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/mmlongbench_dev"))
    ap.add_argument("--pages", type=int, default=40, help="evidence pages sampled")
    ap.add_argument("--per-kind", type=int, default=2, help="same-document and other-document questions per page")
    ap.add_argument("--pairwise", type=int, default=24, help="questions for the pairwise judge")
    ap.add_argument("--judges", default="ql,ql_pmi,yesno,graded,pairwise")
    ap.add_argument("--max-page-tokens", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=str(ROOT / "cache/synth/bench_judges.jsonl"))
    args = ap.parse_args()

    folder, triples, pair_rows = sample(Path(args.data), args.pages, args.per_kind, args.pairwise, args.seed)
    backend = make_backend(BackendSpec(max_page_tokens=args.max_page_tokens))
    needed = sorted({p for _, p, _ in triples} | {p for r in pair_rows for p in r[1:3]})
    pages = {p.id: p for p in load_pages(folder, needed, images=backend.sees_images)}
    triples.sort(key=lambda t: t[1])  # page-major: each page's prefix is computed once
    items = [ops.JudgeItem(q, folder.queries[q], pages[p]) for q, p, _ in triples]
    kinds = [k for _, _, k in triples]
    counts = {k: kinds.count(k) for k in ("pos", "same", "other")}
    print(f"{len(items)} (question, page) pairs: {counts}; {len(pair_rows)} pairwise comparisons; "
          f"model {backend.describe()}")
    judges = args.judges.split(",")
    rows = []
    with SynthStore(args.store) as store:
        for judge in judges:
            t0 = time.perf_counter()
            if judge == "pairwise":
                pitems = [ops.PairItem(q, folder.queries[q], pages[a], pages[b]) for q, a, b, _ in pair_rows]
                prefs, report = ops.judge_pairwise(backend, store, pitems)
                res = {}
                for kind in ("same", "other"):
                    vals = [p for p, r in zip(prefs, pair_rows, strict=True) if r[3] == kind and p is not None]
                    res[kind] = sum(1.0 if v > 0.5 else 0.5 if v == 0.5 else 0.0 for v in vals) / max(len(vals), 1)
                res["all"] = float("nan")
            else:
                if judge == "ql_pmi":
                    values, report = ops.judge_query_likelihood(backend, store, items, pmi=True)
                else:
                    fn = {"ql": ops.judge_query_likelihood, "yesno": ops.judge_yesno, "graded": ops.judge_graded}[judge]
                    values, report = fn(backend, store, items)
                if judge == "graded":
                    # Unparseable labels score as the middle grade (and are counted in the report).
                    values = [GRADES[v] if v is not None else 1 for v in values]
                values = [v if v is not None else 0.5 for v in values]
                res = {}
                for kind in ("same", "other"):
                    sel = [(v, k == "pos") for v, k in zip(values, kinds, strict=True) if k in ("pos", kind)]
                    res[kind] = auc([v for v, _ in sel], [int(y) for _, y in sel])
                res["all"] = auc(values, [int(k == "pos") for k in kinds])
            elapsed = time.perf_counter() - t0
            # Model time per call from the records (this run's and earlier ones'), not this run's wall time.
            recs = [r for r in store.records.values() if r["op"] == report.op]
            model_s = sum(r.get("elapsed_s", 0) for r in recs)
            rate = len(recs) / model_s if model_s else float("nan")
            rows.append((judge, res, report, rate))
            print(f"{judge}: AUC same-doc {res['same']:.3f}, other-doc {res['other']:.3f}, all {res['all']:.3f} "
                  f"({elapsed:.0f}s this run; {rate:.2f} judgements/s model time) | {report.line()}", flush=True)
        print(store.summary())
    print("\n| judge | AUC vs same-document pages | AUC vs other-document pages | AUC all | judgements/s |")
    print("|---|---|---|---|---|")
    for judge, res, _, rate in rows:
        print(f"| {judge} | {res['same']:.3f} | {res['other']:.3f} | {res['all']:.3f} | {rate:.2f} |")


if __name__ == "__main__":
    main()
