"""Leaderboard plots as PNG (matplotlib, no display): scores with confidence intervals, training loss curves,
and the main score across runs."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from harness.report.board import Board
from harness.report.render import short_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("leaderboard")


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _label(backbone: str, variant: str) -> str:
    return f"{variant} / {backbone}"


def scores_plot(board: Board, path: Path) -> Path:
    """Grouped bars per column, one bar per row, with the bootstrap 95% interval of the score."""
    plt = _pyplot()
    names, rows = board.names, list(zip(board.table.backbone, board.table.variant, strict=True))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) * max(1, len(rows)) ** 0.5 + 2), 4.2))
    x = np.arange(len(names))
    for i, (backbone, variant) in enumerate(rows):
        scores = board.table[(board.table.backbone == backbone) & (board.table.variant == variant)].iloc[0]
        heights = np.array([100 * scores[n] for n in names], dtype=float)
        cis = [board.score_ci.get((backbone, variant, n)) for n in names]
        low = [h - 100 * ci[0] if ci else 0.0 for h, ci in zip(heights, cis, strict=True)]
        high = [100 * ci[1] - h if ci else 0.0 for h, ci in zip(heights, cis, strict=True)]
        err = np.clip(np.nan_to_num([low, high]), 0, None)
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, np.nan_to_num(heights), width, yerr=err, capsize=3,
               label=_label(backbone, variant))
    ax.set_xticks(x, [short_name(n) for n in names], rotation=30 if len(names) > 3 else 0, ha="right"
                  if len(names) > 3 else "center")
    ax.set_ylabel("main score x 100")
    ax.set_title("Scores with bootstrap 95% intervals (per-query resampling)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def read_loss_log(training: dict, results_dir: Path) -> list[dict]:
    """The loss points of the file a training record names (harness/report/losses.py reads it); a missing or
    malformed file is reported and drawn as no curve."""
    from harness.report.losses import LossFileError, loss_log_path, read_losses

    path = loss_log_path(training, results_dir)
    if path is None:
        return []
    try:
        return read_losses(path, require=("loss",))
    except LossFileError as exc:
        log.warning("skipping loss log: %s", exc)
        return []


def loss_plot(board: Board, results_dir: Path, path: Path) -> Path | None:
    """Training loss per step for each distinct training behind the table; None when no record has a loss log."""
    curves: dict[str, list[dict]] = {}
    for e in board.entries:
        training = e.record.get("training") or {}
        points = [p for p in read_loss_log(training, results_dir) if "loss" in p]
        if points:
            label = _label(e.backbone, e.variant)
            key = label if label not in curves or curves[label] == points else f"{label} ({e.task})"
            curves[key] = points
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in sorted(curves.items()):
        steps = [p.get("step", i) for i, p in enumerate(points)]
        ax.plot(steps, [p["loss"] for p in points], label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=7)
    return _save(fig, path)


def history_series(board: Board) -> dict[str, list[tuple[datetime, float]]]:
    """One series per (row, task): the task's main score x 100 at each model revision that ran it, in date order.
    Scores of different tasks are never averaged into one point (a page task's mean is not a SciFact score)."""
    series: dict[str, list[tuple[datetime, float]]] = {}
    for e in board.history:
        series.setdefault(f"{_label(e.backbone, e.variant)} / {e.task}", []).append((_date(e.date), 100 * e.score))
    return {label: sorted(points) for label, points in sorted(series.items())}


def history_plot(board: Board, path: Path) -> Path:
    """Each row's main score on each task across its runs (model revisions), in date order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in history_series(board).items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_ylabel("main score x 100")
    ax.set_title("Main score across runs (one line per row and task, one point per model revision)")
    ax.legend(fontsize=6)
    fig.autofmt_xdate()
    return _save(fig, path)


def _date(text: str) -> datetime:
    try:
        date = datetime.fromisoformat(text)
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)
    return date if date.tzinfo else date.replace(tzinfo=timezone.utc)  # comparable with the dated records


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    from harness.io import atomic_path

    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_plots(board: Board, results_dir: Path, out_dir: Path) -> dict[str, Path]:
    """{plot name: PNG path} of the plots that have data."""
    plots = {"scores": scores_plot(board, out_dir / "scores.png"),
             "loss": loss_plot(board, results_dir, out_dir / "loss.png"),
             "history": history_plot(board, out_dir / "history.png")}
    return {name: p for name, p in plots.items() if p is not None}
