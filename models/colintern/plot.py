"""Loss curve of a training as PNG: ``python -m models.colintern.plot LOSS_JSONL_OR_CHECKPOINT --out loss.png``.

Reads the JSONL loss file ({"step", "epoch", "loss"} per line), or a checkpoint folder's training.json (its
``loss_log``). The leaderboard draws the same curves for every trained row (results/plots/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_losses(source: Path) -> list[dict]:
    source = Path(source)
    if source.is_dir():
        source = Path(json.loads((source / "training.json").read_text())["loss_log"])
    return [json.loads(line) for line in source.read_text().splitlines() if line.strip()]


def plot_loss(points: list[dict], out: Path, title: str = "training loss", smooth: int = 1) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    losses = [p["loss"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot(steps, losses, lw=0.8, alpha=0.5 if smooth > 1 else 1.0, label="loss")
    if smooth > 1 and len(losses) >= smooth:
        avg = [sum(losses[i - smooth + 1 : i + 1]) / smooth for i in range(smooth - 1, len(losses))]
        ax.plot(steps[smooth - 1 :], avg, lw=1.5, label=f"mean of {smooth}")
    for epoch in sorted({int(p["epoch"] - 1e-9) for p in points})[1:]:  # epoch boundaries
        first = next(p["step"] for p in points if p["epoch"] > epoch)
        ax.axvline(first - 0.5, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source", type=Path, help="loss JSONL file, or a checkpoint folder with training.json")
    ap.add_argument("--out", type=Path, default=Path("loss.png"))
    ap.add_argument("--smooth", type=int, default=1)
    args = ap.parse_args(argv)
    title = "loss: " + "/".join(args.source.resolve().parts[-3:])[-70:]
    print(plot_loss(read_losses(args.source), args.out, title=title, smooth=args.smooth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
