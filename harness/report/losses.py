"""Loss files and their curves: ``harness plot LOSS_JSONL [LOSS_JSONL ...] --out loss.png`` (one line per file).

The one reader of JSONL loss files ({"step", "epoch", "loss"} per line: the shared training loop's loss file,
ColIntern's and Syntriever's ``loss.jsonl``), or of checkpoint folders whose training.json names one (its
``loss_log``). A missing file or a malformed line is a ``LossFileError`` naming the file and line. The leaderboard
reads the loss file of every trained row through ``loss_log_path`` + ``read_losses`` (harness/report/plots.py).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from harness.io import atomic_path

XAxis = Literal["step", "epoch"]


class LossFileError(ValueError):
    """A loss file that is missing or has a line that is not a loss record (the message names file:line)."""


def read_losses(source: Path, require: Sequence[str] = ("step", "loss")) -> list[dict[str, Any]]:
    """The loss records of a JSONL file (or of a checkpoint folder's training.json ``loss_log``), each with a
    finite number under every key in ``require``."""
    source = Path(source)
    if source.is_dir():
        record = source / "training.json"
        if not record.is_file():
            raise LossFileError(f"{source}: a folder without training.json (give the loss JSONL file)")
        try:
            source = Path(json.loads(record.read_text())["loss_log"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LossFileError(f"{record}: no \"loss_log\" path ({exc})") from None
    if not source.is_file():
        raise LossFileError(f"{source}: no such file")
    points = []
    for n, line in enumerate(source.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LossFileError(f"{source}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise LossFileError(f"{source}:{n}: not a JSON object")
        bad = [k for k in require if not _is_number(rec.get(k))]
        if bad:
            raise LossFileError(f"{source}:{n}: needs a number under {', '.join(repr(k) for k in bad)}")
        points.append(rec)
    if not points:
        raise LossFileError(f"{source}: no loss lines")
    return points


def loss_log_path(training: dict[str, Any], results_dir: Path) -> Path | None:
    """The loss file a training record names: absolute, or relative to the checkpoint folder when the record names
    one, else to the folder holding results/. None when the record names none."""
    name = training.get("loss_log")
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() else Path(training.get("checkpoint") or Path(results_dir).parent) / path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def short_labels(paths: Sequence[Path]) -> list[str]:
    """The shortest path tails that tell the files apart (``run-a/loss.jsonl``, ``run-b/loss.jsonl``)."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same file given twice


def plot_losses(series: Sequence[tuple[str, list[dict[str, Any]]]], out: Path, x: XAxis = "step",
                title: str = "training loss", smooth: int = 1) -> Path:
    """One line per (label, points); ``x`` is the step or the (fractional) epoch. A single series also gets its
    running mean (``smooth``) and dotted epoch boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for label, points in series:
        xs = [p[x] for p in points]
        losses = [p["loss"] for p in points]
        line = ax.plot(xs, losses, lw=0.8, alpha=0.5 if smooth > 1 else 1.0, label=label)[0]
        if smooth > 1 and len(losses) >= smooth:
            avg = [sum(losses[i - smooth + 1 : i + 1]) / smooth for i in range(smooth - 1, len(losses))]
            ax.plot(xs[smooth - 1 :], avg, lw=1.5, color=line.get_color(), label=f"{label} (mean of {smooth})")
    if len(series) == 1 and all("epoch" in p for p in series[0][1]):  # epoch boundaries
        points = series[0][1]
        for epoch in sorted({int(p["epoch"] - 1e-9) for p in points})[1:]:
            first = next(p for p in points if p["epoch"] > epoch)
            ax.axvline(first["step"] - 0.5 if x == "step" else epoch, color="grey", ls=":", lw=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=out.suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out


def plot_loss(points: list[dict[str, Any]], out: Path, title: str = "training loss", smooth: int = 1) -> Path:
    """One training's curve over steps."""
    return plot_losses([("loss", points)], out, title=title, smooth=smooth)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("sources", nargs="+", type=Path, metavar="LOSS_JSONL",
                    help="loss JSONL files (or checkpoint folders with training.json): one line each")
    ap.add_argument("--out", type=Path, default=Path("loss.png"), help="PNG to write (default: loss.png)")
    ap.add_argument("--x", choices=["step", "epoch"], default="step", help="x axis (default: step)")
    ap.add_argument("--smooth", type=int, default=1, help="also draw the running mean of this many points")
    ap.add_argument("--title", default=None)


def run(args: argparse.Namespace) -> Path:
    """Read every source (a LossFileError names the bad file:line) and write the PNG."""
    series = [(label, read_losses(src, require=("step", "loss", args.x)))
              for label, src in zip(short_labels(args.sources), args.sources, strict=True)]
    title = args.title or ("loss: " + series[0][0][-70:] if len(series) == 1 else "training loss")
    return plot_losses(series, args.out, x=args.x, title=title, smooth=args.smooth)

