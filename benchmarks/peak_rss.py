"""Peak memory and wall time of a harness command, as a user runs it.

    python benchmarks/peak_rss.py -- .venv/bin/harness run configs/default.yaml
    python benchmarks/peak_rss.py -- .venv/bin/harness eval --backbone ocr-text --task generated

Runs the command as a child process and prints its wall time and the peak resident set size of the largest process
it started (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the biggest of the command's processes, which for the harness
is the main one; OCR runs in short Tesseract processes). Exits with the command's status.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.perf_counter()
    status = subprocess.call(argv)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports kB
    print(f"command: {' '.join(argv)}\nexit status: {status}\nwall time: {wall:.1f} s\n"
          f"peak RSS: {peak_mb:,.0f} MB ({peak_mb / 1024:.2f} GB)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
