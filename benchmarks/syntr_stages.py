"""SynTR cost per stage from a checkpoint's training.json: wall time of each stage, LLM calls and tokens, training
throughput (examples/s), and the held-out pseudo-query nDCG@10 before and after training.

  python benchmarks/syntr_stages.py results/../checkpoints/syntr/<backbone>/<corpus-key>/training.json [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> int:
    for path in paths:
        r = json.loads(Path(path).read_text())
        print(f"{path}\n  judge {r.get('judge')}, negatives {r.get('negatives')}, prompt {r.get('prompt')}, "
              f"backend {r.get('backend', {}).get('model')}")
        print(f"  wall {r['wall_s']:.1f} s, LLM calls {r['llm_calls']}, LLM tokens {r['llm_tokens']}, "
              f"examples {r['examples']}, steps {r.get('train_steps')}, {r.get('train_examples_per_s')} examples/s, "
              f"{r.get('processes', 1)} process(es)")
        for name, seconds in r.get("stages", {}).items():
            print(f"  {name:<10} {seconds:8.1f} s")
        notes = r.get("notes", {})
        print(f"  queries {notes.get('queries')}\n  judging {notes.get('judging')}\n  split {notes.get('split')}")
        print(f"  val nDCG@10 (best) {r.get('val_ndcg_at_10')}, test pseudo-query nDCG@10 {r.get('test_ndcg_at_10')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
