"""Leaderboard tables as cells (display text + sort key), and their terminal, Markdown, CSV and LaTeX forms.
``answers``: the answer-level table (harness/report/answers.py ``load``), shown as one "Answers" table per answerer
and task after the retrieval tables; None (no answer records) leaves every output as it was."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.report.board import BASE, MARKERS, Board, Column

Cell = tuple[str, float | str]  # (text shown, value a sortable table sorts by)
Grid = tuple[list[str], list[list[Cell]]]  # header, rows
IN_DOMAIN_MARK = "†"
TEXT_COLUMNS = {"backbone", "variant", "reference", "against", "column"}  # left-aligned
LEGEND = {
    "scores": "Main score x 100 (nDCG@5 for page tasks, nDCG@10 for text tasks); (+x) is the change against the "
              "same backbone's base. " + ", ".join(f"{m} p < {b}" for b, m in MARKERS[::-1])
              + ": paired permutation test on per-query scores, Holm-adjusted across the table's columns. "
              "\"of supervised gain\": the row's average gain over base as a share of the supervised row's gain on the "
              "same backbone (shown when a supervised row exists).",
    "reference": "Change against the reference row x 100, with the same markers.",
    "in_domain": f"{IN_DOMAIN_MARK} in-domain: ViDoRe v1 tasks whose data overlaps colpali's training set.",
    "costs": "Training wall time and synthetic-data LLM calls from the recipe's record; encode ms per page and "
             "per query exclude cached items; index size is float32 vectors per page; query latency is encode + "
             "search per query.",
    "answers": "Answers: EM, token F1 and ANLS x 100 of the answerer's answers from each row's top-k pages (k gold: "
               "the oracle row, the relevant pages given; k 0: no retrieval, the answerer alone); recall@k x 100 of "
               "the pages given; Δ ANLS against the same backbone's base at the same task, k and answerer, p of the "
               "paired permutation test on per-query ANLS, Holm-adjusted across the (task, k) cells of one "
               "comparison; s/query: answerer time per query (a stored answer keeps the time it took); prompt "
               "tokens per query; peak RSS of the whole process (retriever + answerer) over that k's queries.",
}


def short_name(task: str) -> str:
    """A compact display name: ViDoRe task names without their common prefix and suffix."""
    name = task.removesuffix(".v2").removesuffix("Retrieval")
    for prefix, label in (("Vidore2", "v2"), ("Vidore3", "v3.1" if task.endswith(".v2") else "v3")):
        if name.startswith(prefix):
            return f"{label} {name.removeprefix(prefix)}"
    return name.removeprefix("Vidore") or task


def header_name(column: Column) -> str:
    return short_name(column.name) + (f" {IN_DOMAIN_MARK}" if column.in_domain else "")


def _nan(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_score(v: float) -> str:
    return "-" if _nan(v) else f"{100 * v:.2f}"


def fmt_delta(v: float) -> str:
    return "-" if _nan(v) else f"{100 * v:+.2f}"


def fmt_seconds(v: float) -> str:
    if _nan(v):
        return "-"
    if v < 120:
        return f"{v:.0f} s"
    return f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h"


def fmt_bytes(v: float) -> str:
    if _nan(v):
        return "-"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_p(v: float) -> str:
    return "-" if _nan(v) else f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def fmt_number(v: float, digits: int = 1) -> str:
    return "-" if _nan(v) else f"{v:,.{digits}f}"


def _key(v: float) -> float | str:
    return "" if _nan(v) else float(v)


def _markers(board: Board, against: str) -> dict[tuple[str, str, str], str]:
    t = board.tests[board.tests.against == against]
    return {(b, v, c): m for b, v, c, m in zip(t.backbone, t.variant, t.column, t.marker, strict=True)}


def score_grid(board: Board) -> Grid:
    """Scores with the change against the same backbone's base and its significance marker."""
    marks = _markers(board, "base")
    header = ["backbone", "variant", *[header_name(c) for c in board.columns], "average", "Δ avg vs base"]
    shares = "recovered_average" in board.table and board.table.recovered_average.notna().any()
    if shares:
        header.append("of supervised gain")
    rows = []
    for _, r in board.table.iterrows():
        cells: list[Cell] = [(r.backbone, r.backbone), (r.variant, r.variant)]
        for c in board.columns:
            text = fmt_score(r[c.name])
            if r.variant != BASE and not _nan(r[f"delta_{c.name}"]):
                text += f" ({fmt_delta(r[f'delta_{c.name}'])}{marks.get((r.backbone, r.variant, c.name), '')})"
            cells.append((text, _key(r[c.name])))
        delta = "" if r.variant == BASE else fmt_delta(r["delta_average"])
        cells += [(fmt_score(r["average"]), _key(r["average"])), (delta, _key(r["delta_average"]))]
        if shares:
            share = r["recovered_average"]
            cells.append(("" if _nan(share) else f"{100 * share:.0f}%", _key(share)))
        rows.append(cells)
    return header, rows


def reference_grid(board: Board) -> Grid | None:
    """The change of every row against the chosen reference, with markers; None without a reference."""
    if not board.reference or "reference" not in board.table:
        return None
    marks = _markers(board, "reference")
    header = ["backbone", "variant", "reference", *[header_name(c) for c in board.columns], "average"]
    rows = []
    for _, r in board.table.iterrows():
        cells: list[Cell] = [(r.backbone, r.backbone), (r.variant, r.variant), (r.reference, r.reference)]
        itself = r.reference == r.model  # the reference's own row: nothing to compare
        for c in board.columns:
            d = math.nan if itself else r[f"delta_ref_{c.name}"]
            cells.append(("" if itself else fmt_delta(d) + marks.get((r.backbone, r.variant, c.name), ""), _key(d)))
        d = math.nan if itself else r["delta_ref_average"]
        cells.append(("" if itself else fmt_delta(d), _key(d)))
        rows.append(cells)
    return header, rows


def cost_grid(board: Board) -> Grid:
    header = ["backbone", "variant", "training time", "LLM calls", "encode ms/page", "OCR ms/page", "index/page",
              "query latency ms"]
    rows = []
    for _, r in board.table.iterrows():
        rows.append([(r.backbone, r.backbone), (r.variant, r.variant),
                     (fmt_seconds(r.train_wall_s), _key(r.train_wall_s)),
                     (fmt_number(r.llm_calls, 0), _key(r.llm_calls)),
                     (fmt_number(r.encode_ms_per_page), _key(r.encode_ms_per_page)),
                     (fmt_number(r.ocr_ms_per_page), _key(r.ocr_ms_per_page)),
                     (fmt_bytes(r.index_bytes_per_page), _key(r.index_bytes_per_page)),
                     (fmt_number(r.query_latency_ms), _key(r.query_latency_ms))])
    return header, rows


def test_grid(board: Board) -> Grid:
    header = ["backbone", "variant", "against", "column", "queries", "Δ x 100", "95% CI", "p", "p (Holm)", "sig."]
    rows = []
    for _, t in board.tests.iterrows():
        ci = f"[{fmt_delta(t.ci_low)}, {fmt_delta(t.ci_high)}]"
        rows.append([(t.backbone, t.backbone), (t.variant, t.variant), (t.reference, t.reference),
                     (short_name(t.column), t.column), (str(t.n), t.n), (fmt_delta(t.delta), t.delta),
                     (ci, t.ci_low), (fmt_p(t.p), t.p), (fmt_p(t.p_holm), t.p_holm),
                     (t.marker, t.marker)])
    return header, rows


def answer_grids(answers: pd.DataFrame | None) -> list[tuple[str, str, Grid]]:
    """One grid per (answerer, task) of the answer table, rows in its order (k, then the rows of each k)."""
    if answers is None or answers.empty:
        return []
    cuda = answers.peak_cuda_mb.notna().any()
    header = ["backbone", "variant", "k", "queries", "EM", "F1", "ANLS", "recall@k", "Δ ANLS vs base", "p (Holm)",
              "s/query", "prompt tokens", "peak RSS", *(["peak CUDA"] if cuda else [])]
    out = []
    for i, ((tag, task), part) in enumerate(answers.groupby(["answerer", "task"], sort=False)):
        rows = []
        for _, r in part.iterrows():
            k = str(r.k)
            cells: list[Cell] = [(r.backbone, r.backbone), (r.variant, r.variant),
                                 (k, float(k) if k.isdigit() else ""), (str(r.queries), r.queries)]
            cells += [(fmt_score(r[m]), _key(r[m])) for m in ("em", "f1", "anls", "recall")]
            cells += [("" if _nan(r.delta_anls) else fmt_delta(r.delta_anls) + r.marker, _key(r.delta_anls)),
                      ("" if _nan(r.p_holm) else fmt_p(r.p_holm), _key(r.p_holm)),
                      (fmt_number(r.s_per_query, 2), _key(r.s_per_query)),
                      (fmt_number(r.prompt_tokens, 0), _key(r.prompt_tokens)),
                      (fmt_bytes(r.peak_rss_mb * 2**20 if not _nan(r.peak_rss_mb) else math.nan),
                       _key(r.peak_rss_mb))]
            if cuda:
                cells.append((fmt_bytes(r.peak_cuda_mb * 2**20 if not _nan(r.peak_cuda_mb) else math.nan),
                              _key(r.peak_cuda_mb)))
            rows.append(cells)
        out.append((f"answers-{i}", f"Answers: {short_name(task)}, {part.answerer_model.iloc[0]} ({tag})",
                     (header, rows)))
    return out


def grids(board: Board, answers: pd.DataFrame | None = None) -> list[tuple[str, str, Grid]]:
    """(key, title, grid) of every table the leaderboard shows, in order."""
    out = [("scores", "Scores", score_grid(board))]
    ref = reference_grid(board)
    if ref:
        out.append(("reference", f"Against {board.reference}", ref))
    out.append(("costs", "Costs", cost_grid(board)))
    if len(board.tests):
        out.append(("tests", "Paired tests", test_grid(board)))
    return out + answer_grids(answers)


def notes(board: Board, answers: pd.DataFrame | None = None) -> list[str]:
    out = [LEGEND["scores"]]
    if board.reference:
        out.append(LEGEND["reference"])
    if any(c.in_domain for c in board.columns):
        out.append(LEGEND["in_domain"])
    out.append(LEGEND["costs"])
    if answers is not None and not answers.empty:
        out.append(LEGEND["answers"])
    return out


def print_tables(board: Board, console: Console | None = None, answers: pd.DataFrame | None = None) -> None:
    console = console or Console()
    for key, title, (header, rows) in grids(board, answers):
        if key == "tests":
            continue  # the detail is in the files; the markers are in the tables above
        rt = Table(title=f"Leaderboard: {title.lower()}" if key == "scores" else title)
        for h in header:
            rt.add_column(h, justify="left" if h in TEXT_COLUMNS else "right",
                          overflow="fold")
        for r in rows:
            rt.add_row(*[text for text, _ in r])
        console.print(rt)
    for note in notes(board, answers):
        console.print(note, style="dim")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(board: Board, answers: pd.DataFrame | None = None) -> str:
    parts = [f"# Leaderboard ({board.view})\n"]
    for _, title, (header, rows) in grids(board, answers):
        parts.append(f"## {title}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "---|" * len(header))
        parts += ["| " + " | ".join(_md_cell(text) for text, _ in r) + " |" for r in rows]
        parts.append("")
    parts += [f"- {note}" for note in notes(board, answers)]
    return "\n".join(parts) + "\n"


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "Δ": r"$\Delta$", "†": r"$^\dagger$"}


def _tex(text: str) -> str:
    return "".join(TEX.get(ch, ch) for ch in text)


def to_latex(board: Board, answers: pd.DataFrame | None = None) -> str:
    """One booktabs table per grid (needs \\usepackage{booktabs})."""
    parts = ["% leaderboard: \\usepackage{booktabs}"]
    for _, title, (header, rows) in grids(board, answers):
        parts += [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{_tex(title)}}}",
                  r"\begin{tabular}{" + "".join("l" if h in TEXT_COLUMNS else "r" for h in header) + "}", r"\toprule",
                  " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        parts += [" & ".join(_tex(text) for text, _ in r) + r" \\" for r in rows]
        parts += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    parts += [f"% {note}" for note in notes(board, answers)]
    return "\n".join(parts) + "\n"


def to_csv(board: Board) -> str:
    """The full table, numbers unrounded: scores, deltas, costs, and the Holm-adjusted p of every test."""
    table = board.table.copy()
    for against, prefix in (("base", "p_holm_"), ("reference", "p_holm_ref_"))[:2 if board.reference else 1]:
        t = board.tests[board.tests.against == against]
        for name in board.names:
            sel = t[t.column == name].set_index(["backbone", "variant"])["p_holm"]
            table[f"{prefix}{name}"] = [sel.get((b, v), math.nan) for b, v in zip(table.backbone, table.variant,
                                                                                 strict=True)]
    return table.to_csv(index=False)


def write_text_outputs(board: Board, out_dir: Path, answers: pd.DataFrame | None = None) -> list[Path]:
    from harness.io import atomic_write_text

    files = {"leaderboard.md": to_markdown(board, answers), "leaderboard.csv": to_csv(board),
             "leaderboard_tests.csv": board.tests.to_csv(index=False), "leaderboard.tex": to_latex(board, answers)}
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in files]

