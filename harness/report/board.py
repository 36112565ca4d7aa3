"""The leaderboard's data: rows backbone x variant, a column per task (or per ViDoRe v2 language), costs, and
paired tests of every row against the same backbone's base and an optional reference.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.evaluate.significance import bootstrap_ci, holm, paired_test
from harness.report.costs import COLUMNS as COST_COLUMNS
from harness.report.costs import row_costs
from harness.report.results import Entry

log = logging.getLogger("leaderboard")
BASE, SUPERVISED = "base", "supervised"
# Holm-adjusted p below the bound. No 0.001 level: with 10,000 random flips the smallest p is 1/10,001, which
# Holm multiplies by up to the number of columns (10 for ViDoRe v1).
MARKERS = ((0.01, "**"), (0.05, "*"))


@dataclass(frozen=True)
class Column:
    """One score column: the mean over its parts, (task, subset) with subset None for the whole task."""

    name: str
    parts: tuple[tuple[str, str | None], ...]
    in_domain: bool = False  # a ViDoRe v1 task whose data overlaps colpali's training set


@dataclass
class Filters:
    benchmarks: Sequence[str] = ()  # v1, v2, local, mteb; empty: all
    backbones: Sequence[str] = ()  # glob patterns on the backbone tag; empty: all
    in_domain: str = "include"  # include, exclude or only (the four ViDoRe v1 tasks in tasks.vidore.IN_DOMAIN_V1)

    def keep(self, entry: Entry) -> bool:
        from tasks.vidore import IN_DOMAIN_V1

        in_domain = entry.task in IN_DOMAIN_V1
        return ((not self.benchmarks or entry.benchmark in self.benchmarks)
                and (not self.backbones or any(fnmatch.fnmatchcase(entry.backbone, p) for p in self.backbones))
                and (self.in_domain == "include" or in_domain == (self.in_domain == "only")))


@dataclass
class Board:
    columns: list[Column]
    table: pd.DataFrame  # backbone, variant, model, <column>..., average, delta_<column>..., costs
    tests: pd.DataFrame  # one row per paired test (row vs base or vs reference, on one column)
    score_ci: dict[tuple[str, str, str], tuple[float, float]]  # (backbone, variant, column) -> 95% CI
    entries: list[Entry] = field(default_factory=list)  # the latest entry per row and task, after filters
    history: list[Entry] = field(default_factory=list)  # every entry after filters (all revisions and dates)
    view: str = "tasks"
    reference: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def marker(p: float) -> str:
    if p is None or math.isnan(p):
        return ""
    return next((m for bound, m in MARKERS if p < bound), "")


def latest(entries: list[Entry]) -> list[Entry]:
    """The most recent entry per (backbone, variant, task)."""
    best: dict[tuple[str, str, str], Entry] = {}
    for e in sorted(entries, key=lambda e: e.date):
        best[(e.backbone, e.variant, e.task)] = e
    return list(best.values())


def task_columns(entries: list[Entry]) -> list[Column]:
    """A column per task: ViDoRe v1, then v2, then local folders and other mteb tasks, by name within each."""
    from tasks.vidore import IN_DOMAIN_V1

    order = {"v1": 0, "v2": 1, "v3": 2, "v3.1": 3, "local": 4, "mteb": 5}
    tasks = sorted({(order.get(e.benchmark, 4), e.task) for e in entries})
    return [Column(t, ((t, None),), t in IN_DOMAIN_V1) for _, t in tasks]


MULTILINGUAL = ("v2", "v3", "v3.1")  # ViDoRe benchmarks whose tasks have a subset per query language


def language_columns(entries: list[Entry]) -> list[Column]:
    """ViDoRe v2/v3 by language: each language's subset score averaged over the benchmark's tasks (hf_subset =
    language); columns are named "<benchmark> <language>" when more than one benchmark is shown."""
    benches = [b for b in MULTILINGUAL if any(e.benchmark == b for e in entries)]
    columns = []
    for bench in benches:
        of = [e for e in entries if e.benchmark == bench]
        tasks = sorted({e.task for e in of})
        languages = sorted({key.split("/", 1)[0] for e in of for key in e.subsets} - {"default"})
        # a task with one subset (such as the English-only ESG HL task) has no language column of its own
        columns += [Column(lang if len(benches) == 1 else f"{bench} {lang}", tuple((t, lang) for t in tasks if any(
            k.startswith(f"{lang}/") for e in of if e.task == t for k in e.subsets))) for lang in languages]
    return columns


def _part_score(entry: Entry | None, subset: str | None) -> float:
    if entry is None:
        return math.nan
    if subset is None:
        return entry.score
    values = [v for k, v in entry.subsets.items() if k.split("/", 1)[0] == subset]
    return float(np.mean(values)) if values else math.nan


def _cell(by_task: dict[str, Entry], column: Column) -> tuple[float, dict[str, dict[str, float]]]:
    """A row's score in a column (NaN unless it has every part) and its per-query scores by group."""
    score = float(np.mean([_part_score(by_task.get(t), s) for t, s in column.parts]))
    per_query: dict[str, dict[str, float]] = {}
    for t, s in column.parts:
        if t in by_task:
            per_query.update(by_task[t].per_query(s))
    return score, per_query


def _reference_row(row: tuple[str, str], reference: str, rows: dict[tuple[str, str], str]) -> tuple[str, str] | None:
    """A reference is a model name ("variant/backbone": one row for all) or a variant of each row's backbone."""
    if "/" in reference:
        return next((r for r, model in rows.items() if model == reference), None)
    return (row[0], reference) if (row[0], reference) in rows else None


def build(entries: list[Entry], *, filters: Filters | None = None, view: str = "tasks", reference: str | None = None,
          n_permutations: int = 10_000, n_boot: int = 10_000, seed: int = 0) -> Board:
    """The leaderboard from every collected entry (the unfiltered ones serve as fallback encode rates)."""
    history = [e for e in entries if (filters or Filters()).keep(e)]
    if view == "languages":
        history = [e for e in history if e.benchmark in MULTILINGUAL]
    current = latest(history)
    columns = language_columns(current) if view == "languages" else task_columns(current)
    names = [c.name for c in columns]
    rows: dict[tuple[str, str], dict[str, Entry]] = {}
    for e in current:
        rows.setdefault(e.row, {})[e.task] = e
    models = {row: max(by_task.values(), key=lambda e: e.date).model for row, by_task in sorted(rows.items())}

    records, per_query, score_ci = [], {}, {}
    for row, by_task in sorted(rows.items()):
        out = {"backbone": row[0], "variant": row[1], "model": models[row]}
        for c in columns:
            out[c.name], per_query[row, c.name] = _cell(by_task, c)
            values, groups = _group_values(per_query[row, c.name])
            if len(values):  # error bars of the plot: 2,000 resamples are plenty for a drawing
                score_ci[(*row, c.name)] = bootstrap_ci(values, groups, n_boot=min(n_boot, 2000), seed=seed)
        records.append(out | row_costs(list(by_task.values()), entries))
    table = pd.DataFrame(records, columns=["backbone", "variant", "model", *names, *COST_COLUMNS])
    table.insert(3 + len(names), "average", table[names].mean(axis=1, skipna=False))  # NaN unless every column
    base = table[table.variant == BASE].set_index("backbone")
    for col in [*names, "average"]:
        table[f"delta_{col}"] = table[col] - table.backbone.map(base[col])  # NaN where no base row
    _add_recovered(table, [*names, "average"])
    if reference:
        _add_reference(table, [*names, "average"], reference, models)
    tests = _tests(names, per_query, reference, models, n_permutations, n_boot, seed)
    return Board(columns, table, tests, score_ci, current, history, view, reference)


def _add_recovered(table: pd.DataFrame, columns: list[str]) -> None:
    """recovered_<column>: a row's gain over base as a share of the ``supervised`` row's gain on the same backbone
    (the ceiling a synthetic recipe tries to reach); NaN without a supervised row, or where it does not gain."""
    sup = table[table.variant == SUPERVISED].set_index("backbone")
    for col in columns:
        gain = table.backbone.map(sup[f"delta_{col}"]) if len(sup) else pd.Series(math.nan, index=table.index)
        share = table[f"delta_{col}"] / gain.where(gain > 0)
        table[f"recovered_{col}"] = share.where(~table.variant.isin([BASE, SUPERVISED]))


def _add_reference(table: pd.DataFrame, columns: list[str], reference: str,
                   models: dict[tuple[str, str], str]) -> None:
    """The reference's model name for each row, and the change against it (delta_ref_<column>)."""
    refs = [_reference_row(row, reference, models) for row in zip(table.backbone, table.variant, strict=True)]
    if not any(refs):
        log.warning("reference %r matches no row (a variant name, or a model name variant/backbone)", reference)
    table["reference"] = [models[r] if r else "" for r in refs]
    by_row = table.set_index(["backbone", "variant"])
    for col in columns:
        table[f"delta_ref_{col}"] = [value - by_row.loc[r, col] if r else math.nan
                                     for value, r in zip(table[col], refs, strict=True)]


def _group_values(per_query: dict[str, dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    values, groups = [], []
    for g, key in enumerate(sorted(per_query)):
        values += list(per_query[key].values())
        groups += [g] * len(per_query[key])
    return np.asarray(values, dtype=float), np.asarray(groups)


def _tests(names: list[str], per_query: dict, reference: str | None, models: dict[tuple[str, str], str],
           n_permutations: int, n_boot: int, seed: int) -> pd.DataFrame:
    """Every row against its backbone's base (and the reference), per column; Holm across the columns of one
    comparison (one row against one other row)."""
    out = []
    published = {row for row in models if row[1] == "published"}  # no per-query scores: never tested
    for row in models:
        if row in published:
            continue
        against = [("base", (row[0], BASE) if (row[0], BASE) in models else None)]
        if reference:
            against.append(("reference", _reference_row(row, reference, models)))
        for kind, ref in against:
            if ref is None or ref == row or ref in published:
                continue
            family = []
            for name in names:
                result = paired_test(per_query[ref, name], per_query[row, name],
                                     n_permutations=n_permutations, n_boot=n_boot, seed=seed)
                if result is None:
                    if per_query[ref, name] or per_query[row, name]:
                        log.warning("%s vs %s on %s: no shared queries, not tested", models[row], models[ref], name)
                    continue
                family.append({"backbone": row[0], "variant": row[1], "against": kind, "reference": models[ref],
                               "column": name, "n": result.n, "delta": result.delta, "ci_low": result.ci_low,
                               "ci_high": result.ci_high, "p": result.p, "exact": result.exact})
            for test, p_holm in zip(family, holm([t["p"] for t in family]), strict=True):
                out.append({**test, "p_holm": p_holm, "marker": marker(p_holm)})
    columns = ["backbone", "variant", "against", "reference", "column", "n", "delta", "ci_low", "ci_high", "p",
               "exact", "p_holm", "marker"]
    return pd.DataFrame(out, columns=columns)
