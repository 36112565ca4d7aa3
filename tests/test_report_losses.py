"""harness/report/losses.py: the one loss-file reader, behind `harness plot` and the leaderboard's loss curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from harness.report.losses import loss_log_path, read_losses
from harness.report.plots import read_loss_log


def test_plot_command_draws_curves_and_names_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    for name, losses in (("a", [2.0, 1.5, 1.0, 0.7]), ("b", [2.2, 1.1, 0.9, 0.5])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "loss.jsonl").write_text("".join(
            json.dumps({"step": i + 1, "epoch": (i + 1) / 2, "loss": x}) + "\n" for i, x in enumerate(losses)))
    out = tmp_path / "plots" / "loss.png"
    for x in ("step", "epoch"):
        assert main(["plot", str(tmp_path / "a" / "loss.jsonl"), str(tmp_path / "b" / "loss.jsonl"),
                     "--out", str(out), "--x", x]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out.unlink()

    bad = tmp_path / "bad.jsonl"
    for text, message in [('{"step": 1, "loss": 1.0}\n{oops\n', "bad.jsonl:2: not JSON"),
                          ('{"step": 1, "loss": 1.0}\n\n{"step": 2}\n', "bad.jsonl:3: needs a number under 'loss'"),
                          ('{"step": 1, "loss": "high"}\n', "bad.jsonl:1: needs a number under 'loss'"),
                          ("", "bad.jsonl: no loss lines")]:
        bad.write_text(text)
        assert main(["plot", str(bad), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    assert main(["plot", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    # --x epoch needs the epoch in every line
    bad.write_text('{"step": 1, "loss": 1.0}\n')
    assert main(["plot", str(bad), "--x", "epoch", "--out", str(out)]) == 2
    assert "bad.jsonl:1: needs a number under 'epoch'" in capsys.readouterr().err


def test_leaderboard_reads_loss_logs_through_the_same_reader(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "loss.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    training = {"loss_log": "loss.jsonl", "checkpoint": str(ckpt)}  # relative to the checkpoint folder
    assert loss_log_path(training, tmp_path / "results") == ckpt / "loss.jsonl"
    assert [p["loss"] for p in read_loss_log(training, tmp_path / "results")] == [2.0, 1.0]
    assert read_losses(ckpt / "loss.jsonl") == read_loss_log(training, tmp_path / "results")
    # without a checkpoint: relative to the folder holding results/
    assert loss_log_path({"loss_log": "x/loss.jsonl"}, tmp_path / "results") == tmp_path / "x" / "loss.jsonl"
    assert read_loss_log({"loss_log": None}, tmp_path) == []
    # a bad line: no curve, and a warning naming file:line (it used to plot whatever parsed)
    (ckpt / "loss.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": NaN}\n')
    with caplog.at_level(logging.WARNING):
        assert read_loss_log(training, tmp_path / "results") == []
    assert "loss.jsonl:2: needs a number under 'loss'" in caplog.text
