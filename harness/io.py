"""Atomic writes: a file (or folder) appears whole under its name or not at all.

Every writer goes through ``atomic_path``: the content is written to a temp name beside the target (same folder,
so the rename cannot cross file systems) and renamed over it with ``os.replace``; an error removes the temp and
leaves any previous version in place. A killed process leaves only a dot-file named ``.<name>.<pid>.tmp``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to (a file, or a folder for writers such as
    ``save_pretrained``); on success it replaces ``path``. ``suffix`` keeps an extension that writers read the
    format from (matplotlib's ``savefig``). A folder replaces only a missing or empty ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")  # the pid: concurrent writers never collide
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, payload: Any, **dumps: Any) -> Path:
    """``json.dumps(payload, indent=2, **dumps)`` written atomically."""
    return atomic_write_text(path, json.dumps(payload, **{"indent": 2, **dumps}))


def atomic_write_lines(path: str | Path, lines: list[str]) -> Path:
    """One line each (JSONL files), newline-terminated."""
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
