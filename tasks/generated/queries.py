"""The generated task's queries: one fact each, asked in several phrasings, relevant to every page that shows it."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from tasks.generated.config import GeneratedConfig
from tasks.generated.layouts import PagePlan
from tasks.generated.world import Entity, Fact, cap, poss

# One template list per query kind; {Name} starts keyword-style queries.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "fact": ("What was the {metric} of {ref} in {year}?", "{Name} {metric} {year}",
             "{year} {metric} for {ref}", "Find {poss} {metric} figure for {year}.",
             "{ref}: {metric} in {year}?", "{metric} {Name} {year} value"),
    # which-entity uses the metric's own label: an alias plus the unit can repeat ("employees ... employees")
    "which-entity": ("Which {noun} reported {label} of {value} in {year}?",
                     "{noun} with {label} {value} in {year}",
                     "Name the {noun} whose {label} was {value} in {year}."),
    "peak-year": ("In which year did {ref} have the highest {metric}?", "{Name} {metric} peak year",
                  "When was {poss} {metric} at its highest?"),
    "low-year": ("In which year was {poss} {metric} lowest?", "{Name} lowest {metric} year",
                 "year with the lowest {metric} for {ref}"),
    "leader": ("Who is the {leader} of {ref}?", "{Name} {leader} name", "name of {poss} {leader}"),
    "registry": ("What is the registry number of {ref}?", "{Name} registry no.",
                 "registration number on the filing of {ref}"),
}
# Which query kinds a layout prefers, in order (query slot j starts at position j).
PREFERENCES = {"prose": ("fact", "leader", "which-entity"), "table": ("fact", "which-entity"),
               "bar": ("peak-year", "fact"), "line": ("low-year", "fact"),
               "form": ("registry", "fact", "which-entity")}


@dataclass
class Query:
    id: str
    text: str
    kind: str
    answer: str
    entity: Entity
    metric: str | None
    year: int | None
    relevant: list[str]


def _candidates(kind: str, page: PagePlan, world: list[Entity]) -> list[Fact]:
    e = page.entity
    if kind in ("fact", "which-entity"):
        keys = sorted((f for f in page.facts if f[0] == "value"), key=lambda f: (f[2], f[3]))
        if kind == "which-entity":  # the value must identify the entity among its kind
            keys = [f for f in keys if not any(
                o is not e and o.kind is e.kind and o.num(f[2], f[3]) == e.num(f[2], f[3]) for o in world)]
        return keys
    if kind in ("peak-year", "low-year"):
        keys = sorted((f for f in page.facts if f[0] == "series"), key=lambda f: f[2])
        return [f for f in keys if len(set(e.values[f[2]].values())) == len(e.values[f[2]])]  # no ties
    return [f for f in page.facts if f[0] == kind]


def _query(kind: str, fact: Fact, rng: random.Random) -> tuple[str, str, str | None, int | None]:
    e: Entity = fact[1]
    metric = e.metric(fact[2]) if len(fact) > 2 else None
    year = fact[3] if len(fact) > 3 else None
    slots = {"ref": e.ref, "Name": e.name, "poss": poss(e.ref), "noun": e.kind.noun, "leader": e.kind.leader,
             "metric": rng.choice(metric.aliases) if metric else "", "label": metric.label if metric else "",
             "year": year,
             "value": e.amount(metric.key, year) if metric and year else ""}
    text = cap(rng.choice(TEMPLATES[kind]).format(**slots))
    if kind == "fact":
        answer = e.amount(metric.key, year)
    elif kind == "which-entity":
        answer = e.name
    elif kind in ("peak-year", "low-year"):
        series = e.values[metric.key]
        answer = str((max if kind == "peak-year" else min)(series, key=series.__getitem__))
    else:
        answer = e.leader if kind == "leader" else e.registry
    return text, answer, metric.key if metric else None, year


def make_queries(config: GeneratedConfig, world: list[Entity], plans: list[PagePlan],
             rng: random.Random) -> list[Query]:
    shown: dict[Fact, list[str]] = defaultdict(list)
    for p in plans:
        for f in p.facts:
            shown[f].append(p.id)
    used: set[tuple[str, Fact]] = set()
    queries: list[Query] = []
    for page in plans:
        prefs = PREFERENCES[page.layout]
        for j in range(config.queries_per_page):
            for kind in prefs[j % len(prefs):] + prefs[:j % len(prefs)]:
                cands = [f for f in _candidates(kind, page, world) if (kind, f) not in used]
                if not cands:
                    continue
                rng.shuffle(cands)
                fact = min(cands, key=lambda f: len(shown[f]))  # prefer facts this page alone shows
                used.add((kind, fact))
                text, answer, metric, year = _query(kind, fact, rng)
                queries.append(Query(f"q{len(queries) + 1:04d}", text, kind, answer, fact[1], metric, year,
                                     sorted(shown[fact])))
                break
    return queries
