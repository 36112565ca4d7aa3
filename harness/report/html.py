"""One self-contained HTML page: every table (sortable by clicking a header), the notes and the plots embedded
as base64 PNG. No network, no external file: it opens from disk in any browser.

A sort can also be asked for in the address: ``leaderboard.html#sort=average`` (the scores table),
``#sort=costs.query-latency-ms:asc``; the page then clicks that header itself (descending first, once more for
ascending), so a headless browser exercises the same code path as a user.
"""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path

import pandas as pd

from harness.report.board import Board
from harness.report.render import Grid, grids, notes

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #666; font-size: 12px; }
table { border-collapse: collapse; margin: 4px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; border-bottom: 1px solid #ddd; white-space: nowrap; }
td.num { text-align: right; } th { background: #f3f4f6; cursor: pointer; user-select: none; text-align: center; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
tbody tr:hover { background: #fafae0; }
ul.notes { color: #555; font-size: 12px; padding-left: 18px; }
figure { display: inline-block; vertical-align: top; margin: 8px 16px 8px 0; }
figure img { width: 560px; max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
"""

JS = """
function cellValue(row, i, numeric) {
  const v = row.cells[i].dataset.value;
  if (v === undefined || v === "") return null;  // missing values sort last either way
  return numeric ? parseFloat(v) : v;
}
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
  const numeric = th.dataset.type === "num";
  const dir = th.classList.contains("desc") ? "asc" : "desc";  // first click: best scores first
  table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
  th.classList.add(dir);
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, i, numeric), y = cellValue(b, i, numeric);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = numeric ? x - y : String(x).localeCompare(String(y));
    return dir === "asc" ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => sortBy(th)));
function sortFromHash() {
  const m = /sort=(?:([\\w-]+)\\.)?([\\w-]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash));
  if (!m) return;
  const th = document.querySelector(`#table-${m[1] || "scores"} th[data-key="${m[2]}"]`);
  if (!th) return;
  th.classList.remove("asc", "desc");
  th.click();
  if (m[3] === "asc") th.click();
}
window.addEventListener("hashchange", sortFromHash);
sortFromHash();
"""


def slug(text: str) -> str:
    """The key of a header in ``#sort=``: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "column"


def _table(key: str, grid: Grid) -> str:
    header, rows = grid
    # a column sorts as numbers when every cell's key is a number or missing ("")
    numeric = [all(isinstance(r[i][1], Real) or r[i][1] == "" for r in rows) for i in range(len(header))]
    ths = "".join(f'<th data-key="{slug(h)}" data-type="{"num" if n else "text"}">{html.escape(h)}</th>'
                  for h, n in zip(header, numeric, strict=True))
    trs = []
    for r in rows:
        tds = "".join(f'<td class="{"num" if n else "text"}" data-value="{html.escape(str(v))}">'
                      f"{html.escape(text)}</td>" for (text, v), n in zip(r, numeric, strict=True))
        trs.append(f'<tr data-row="{html.escape(f"{r[0][0]}|{r[1][0]}")}">{tds}</tr>')
    return (f'<table class="sortable" id="table-{key}"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(trs)}</tbody></table>")


CAPTIONS = {"scores": "Scores per column with bootstrap 95% intervals", "loss": "Training loss",
            "history": "Main score across runs"}


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(CAPTIONS.get(name, name))
    return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def render(board: Board, plots: dict[str, Path], *, source: str = "", filters: str = "",
           answers: pd.DataFrame | None = None) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>Leaderboard ({html.escape(board.view)})</h1>",
            f'<p class="meta">{html.escape(source)} · generated {when}'
            + (f" · {html.escape(filters)}" if filters else "") + " · click a header to sort</p>"]
    for key, title, grid in grids(board, answers):
        body += [f"<h2>{html.escape(title)}</h2>", _table(key, grid)]
    body.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes(board, answers)) + "</ul>")
    if plots:
        body += ["<h2>Plots</h2>", *[_figure(name, path) for name, path in plots.items()]]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Leaderboard</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + f"\n<script>{JS}</script>\n</body></html>\n")


def write_html(board: Board, plots: dict[str, Path], path: Path, *, answers: pd.DataFrame | None = None,
               **meta: str) -> Path:
    from harness.io import atomic_write_text

    atomic_write_text(path, render(board, plots, answers=answers, **meta))
    return path
