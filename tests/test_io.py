"""harness/io.py: a write either replaces the file whole or leaves the old one, and never leaves a temp behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.io import atomic_path, atomic_write_json, atomic_write_lines, atomic_write_text


def test_writes_replace_the_file_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "record.json"
    atomic_write_text(target, "old")
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    atomic_write_lines(tmp_path / "loss.jsonl", ['{"step": 1}', '{"step": 2}'])
    assert (tmp_path / "loss.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["loss.jsonl", "record.json", "sub"]


def test_a_failed_write_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    atomic_write_text(target, "previous")
    with pytest.raises(RuntimeError, match="disk"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_folder_appears_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        assert not target.exists()  # nothing under the final name until the block ends
    assert (target / "config.json").is_file()
    with pytest.raises(ValueError), atomic_path(tmp_path / "other") as tmp:
        tmp.mkdir()
        raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_suffix_keeps_the_extension_for_format_sniffing_writers(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
