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


class ProgressBar:
    """A rich progress bar (or nothing): one line per operation."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self._p = None
        if enabled and total and progress_enabled():  # `--quiet` silences every caller
            from rich.console import Console
            from rich.progress import Progress

            self._p = Progress(console=Console(stderr=True), transient=False)  # stdout stays for results
            self._task = self._p.add_task(label, total=total)
            self._p.start()

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
