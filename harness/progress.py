"""One switch for progress display on long work (OCR, encoding, LLM generation, training).

On by default; ``harness ... --quiet`` turns it off. It lives in the environment (``HARNESS_PROGRESS=0``) so
that worker processes (torchrun ranks, OCR pools) inherit it; library code asks ``progress_enabled()``.
Bars go to stderr: stdout stays for results.
"""

from __future__ import annotations

import os

ENV = "HARNESS_PROGRESS"


def progress_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def set_progress(enabled: bool) -> None:
    os.environ[ENV] = "1" if enabled else "0"
