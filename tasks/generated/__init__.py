"""The generated offline task: a seeded world of fictional entities, rendered as document pages (BEIR folder).

Every entity (company, city, species) has invented facts per year. Pages show a subset of those facts in
one of five layouts (prose, table, bar chart, line chart, form); each page records exactly which facts it
displays, and the qrels come from that record, never from OCR. Queries ask for one fact, so a query that
names entity + metric + year is answered by the page(s) displaying that fact, while the entity's other pages
and other entities' pages for the same year are near misses.

    generate(GeneratedConfig(seed=0), Path("cache/generated"))   # ~60 pages, ~120 queries

Writes `corpus.jsonl` (image-only: empty title/text, `image` is a relative path), `pages/<id>.png`,
`queries.jsonl`, `qrels/test.tsv` and `generator.json` (parameters, version, sha256 of the files).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import PIL
from PIL import Image

from tasks import render

# Bump whenever the output for a given config changes (content, layout, drawing): it invalidates caches.
GENERATOR_VERSION = "1.0.0"
LAYOUTS = ("prose", "table", "bar", "line", "form")  # one page of each per entity
PAGES_PER_ENTITY = len(LAYOUTS)
DRAW_WIDTH = 850  # pixels; pages are drawn this wide, then resized to GeneratedConfig.page_size


@dataclass(frozen=True)
class GeneratedConfig:
    seed: int = 0
    n_entities: int = 12  # x 5 layouts = 60 pages
    years: tuple[int, ...] = (2018, 2019, 2020, 2021, 2022)
    queries_per_page: int = 2
    page_size: tuple[int, int] = (850, 1100)  # pixels; Tesseract reads one in under a second
    noise: float = 0.5  # scan noise strength in [0, 1]; 0 gives clean pages

    def __post_init__(self) -> None:
        object.__setattr__(self, "years", tuple(sorted(int(y) for y in self.years)))
        object.__setattr__(self, "page_size", tuple(int(v) for v in self.page_size))
        checks = {
            "n_entities": isinstance(self.n_entities, int) and self.n_entities >= 1,
            "years": len(self.years) >= 2 and len(set(self.years)) == len(self.years),
            "queries_per_page": isinstance(self.queries_per_page, int) and self.queries_per_page >= 1,
            # Portrait pages only: layouts are drawn at a fixed width (see _build) and need the height.
            "page_size": len(self.page_size) == 2 and self.page_size[0] >= 400
            and self.page_size[1] >= 1.2 * self.page_size[0],
            "noise": 0.0 <= self.noise <= 1.0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"GeneratedConfig.{key}: invalid value {getattr(self, key)!r}")

    @property
    def n_pages(self) -> int:
        return self.n_entities * PAGES_PER_ENTITY


# --------------------------------------------------------------------------------------------- the world

@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # as written in prose ("revenue")
    header: str  # table/axis/form label, with the unit ("Revenue (million EUR)")
    unit: str  # after a number in prose ("million EUR"); may be empty
    decimals: int
    lo: float  # range of the first year's value (log-uniform)
    hi: float
    sigma: float  # relative year-to-year change
    aliases: tuple[str, ...]  # how queries name it (the label among them)


@dataclass(frozen=True)
class Kind:
    name: str
    noun: str  # "Which company ...?"
    leader: str  # title of the entity's named person
    report: str  # running header of its documents
    form: str  # title of its filing form
    source: str  # who publishes its figures
    metrics: tuple[Metric, ...]
    fillers: tuple[str, ...]  # sentences that state no fact


def _m(key: str, label: str, header: str, unit: str, dec: int, lo: float, hi: float, sigma: float,
       *aliases: str) -> Metric:
    return Metric(key, label, header, unit, dec, lo, hi, sigma, (label, *aliases))


KINDS = (
    Kind("company", "company", "chief executive", "Annual Report", "Annual Company Filing",
         "the Registry of Commerce", (
             _m("revenue", "revenue", "Revenue (million EUR)", "million EUR", 1, 40, 900, 0.09,
                "total revenue", "sales revenue"),
             _m("employees", "headcount", "Employees", "employees", 0, 150, 25000, 0.06,
                "number of employees", "staff count"),
             _m("units", "units shipped", "Units shipped (thousands)", "thousand units", 0, 20, 950, 0.1,
                "shipment volume", "unit shipments"),
             _m("rnd", "R&D spending", "R&D spending (million EUR)", "million EUR", 1, 2, 80, 0.12,
                "research and development spending", "R&D budget"),
         ), (
             "The board met four times during the period and approved the new supplier code.",
             "Management expects trading conditions to remain broadly stable.",
             "A second warehouse opened on the northern ring road in the spring.",
             "The company continued to invest in staff training and safety audits.",
             "Customer complaints fell after the service desk moved to a single site.",
             "Several long-term contracts were renewed on similar terms.",
             "The audit committee reviewed the treatment of leases and found no issues.",
             "Energy costs remained the largest source of uncertainty for the business.",
         )),
    Kind("city", "city", "mayor", "Municipal Yearbook", "Municipal Statistics Return",
         "the Municipal Statistics Office", (
             _m("population", "population", "Population (residents)", "residents", 0, 18000, 1900000, 0.03,
                "number of residents", "population count"),
             _m("rainfall", "annual rainfall", "Annual rainfall (mm)", "mm", 0, 280, 2400, 0.15,
                "rainfall", "yearly precipitation"),
             _m("tourists", "tourist arrivals", "Tourist arrivals (thousands)", "thousand visitors", 0,
                15, 4800, 0.11, "number of tourists", "visitor arrivals"),
             _m("temperature", "mean temperature", "Mean temperature (degrees C)", "degrees C", 1, 3, 21,
                0.04, "average temperature", "mean annual temperature"),
         ), (
             "The council resurfaced most of the old market quarter during the summer months.",
             "A new tram line to the eastern districts was approved after public consultation.",
             "Library opening hours were extended on weekday evenings.",
             "The harbour authority completed repairs to the outer breakwater.",
             "Volunteers planted trees along the river path in the autumn.",
             "Waste collection moved to a fortnightly schedule in the outer suburbs.",
             "The annual lantern festival drew crowds to the old town square.",
             "Two primary schools were merged into a single campus.",
         )),
    Kind("species", "species", "lead researcher", "Field Survey Report", "Species Monitoring Record",
         "the Wildlife Survey Institute", (
             _m("count", "estimated population", "Estimated population (individuals)", "individuals", 0,
                400, 95000, 0.08, "population size", "number of individuals"),
             _m("mass", "average body mass", "Average body mass (grams)", "grams", 1, 6, 900, 0.04,
                "mean body mass", "body weight"),
             _m("range", "range area", "Range area (square km)", "square km", 0, 120, 48000, 0.07,
                "habitat range", "distribution area"),
             _m("sites", "number of breeding sites", "Breeding sites", "", 0, 12, 950, 0.09,
                "breeding sites", "breeding site count"),
         ), (
             "Survey teams followed the standard transect protocol on every visit.",
             "Weather delayed the spring fieldwork by roughly two weeks.",
             "Camera traps were replaced with a newer model in the western plots.",
             "Volunteers helped record sightings along the coastal paths.",
             "Samples were archived for later genetic analysis.",
             "Access to two upland plots was restricted after a landslide.",
             "The survey method has not changed since the programme began.",
             "Observers noted more activity at dusk than in previous seasons.",
         )),
)
SPECIES_NOUNS = ("marten", "finch", "newt", "heron", "vole", "salamander", "plover", "shrew", "beetle")
COMPANY_SUFFIXES = ("Dynamics", "Holdings", "Industries", "Systems", "Works", "Logistics", "Labs", "Group")
REGION_SUFFIXES = ("Province", "Valley", "District", "Coast", "Highlands")
ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "pr", "qu", "r", "s", "sk",
          "st", "t", "th", "tr", "v", "vr", "z")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk")

Fact = tuple  # ("value", entity, metric, year) | ("series", entity, metric) | ("leader"|"registry", entity)


@dataclass(eq=False)  # hashed by identity: entities sit inside fact tuples
class Entity:
    name: str
    kind: Kind
    leader: str
    registry: str
    region: str
    values: dict[str, dict[int, float]]  # metric key -> year -> value (already rounded as displayed)

    @property
    def ref(self) -> str:  # how a sentence refers to it
        return f"the {self.name}" if self.kind.name == "species" else self.name

    def metric(self, key: str) -> Metric:
        return next(m for m in self.kind.metrics if m.key == key)

    def num(self, key: str, year: int) -> str:
        return f"{self.values[key][year]:,.{self.metric(key).decimals}f}"

    def amount(self, key: str, year: int) -> str:
        return f"{self.num(key, year)} {self.metric(key).unit}".strip()


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def _world(config: GeneratedConfig, rng: random.Random) -> list[Entity]:
    used: set[str] = {""}

    def fresh(syllables: tuple[int, ...]) -> str:  # invented words, unique across the whole world
        while True:
            w = _word(rng, rng.choice(syllables)).capitalize()
            if 5 <= len(w) <= 11 and w not in used:
                used.add(w)
                return w

    entities = []
    for i in range(config.n_entities):
        kind = KINDS[i % len(KINDS)]  # balanced kinds, so same-kind distractors exist
        base = fresh((2, 3))
        name = {"company": f"{base} {rng.choice(COMPANY_SUFFIXES)}",
                "species": f"{base} {rng.choice(SPECIES_NOUNS)}"}.get(kind.name, base)
        values: dict[str, dict[int, float]] = {}
        for m in kind.metrics:
            v, drift = math.exp(rng.uniform(math.log(m.lo), math.log(m.hi))), rng.uniform(-0.02, 0.05)
            values[m.key] = {}
            for y in config.years:
                values[m.key][y] = round(v, m.decimals)
                v *= max(0.5, 1 + drift + rng.gauss(0, m.sigma))
        letters = "ABCDEFGHJKLMNPRSTUVWXZ"  # no I/O/Q/Y: they read as digits or each other
        registry = ""
        while registry in used:  # unique, so a registry query has exactly one answer
            registry = f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randrange(10000, 100000)}"
        used.add(registry)
        entities.append(Entity(
            name=name, kind=kind, leader=f"{fresh((2,))} {fresh((2, 3))}", registry=registry,
            region=f"{fresh((2, 3))} {rng.choice(REGION_SUFFIXES)}", values=values))
    rng.shuffle(entities)
    return entities


# ----------------------------------------------------------------------------------------------- pages

@dataclass
class PagePlan:
    layout: str
    entity: Entity
    years: tuple[int, ...]
    metrics: tuple[str, ...]
    style: render.Style
    draw: Callable[[render.Page], None] = field(repr=False)
    facts: set[Fact] = field(default_factory=set)
    id: str = ""


ACCENTS = ((28, 60, 120), (120, 30, 40), (25, 90, 70), (70, 50, 110), (40, 40, 40), (150, 80, 20))


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _poss(s: str) -> str:
    return s + ("'" if s.endswith("s") else "'s")


def _plans(config: GeneratedConfig, world: list[Entity], rng: random.Random) -> list[PagePlan]:
    years = config.years
    plans: list[PagePlan] = []
    for e in world:
        k = min(3, len(years) - 1)
        start = rng.randrange(len(years) - k + 1)
        table_years = years[start:start + k]
        # Prose and form pages take years the table does not show, so their facts are mostly unique.
        outside = [y for y in years if y not in table_years]
        prose_year, form_year = rng.sample(outside, 2) if len(outside) >= 2 else (outside[0], outside[0])
        a, b, c, d = (m.key for m in rng.sample(e.kind.metrics, 4))
        for layout in LAYOUTS:
            # Each page draws from its own RNG, so drawing order cannot change another page's content.
            rng_page = random.Random(rng.getrandbits(64))
            style = render.Style(
                body=rng.choice(("sans", "serif", "mono")), heading=rng.choice(("sans", "serif")),
                body_size=rng.choice((17, 18, 19, 20)), title_size=rng.choice((26, 28, 30, 32)),
                accent=rng.choice(ACCENTS))
            if layout == "prose":
                plans.append(_prose(e, prose_year, (c, d, rng.choice((a, b))), style, rng_page))
            elif layout == "table":
                plans.append(_table(e, table_years, (a, b, c, d), style, rng_page))
            elif layout in ("bar", "line"):
                plans.append(_chart(layout, e, years, a if layout == "bar" else b, style, rng_page))
            else:
                plans.append(_form(e, form_year, (a, b, c, d), style, rng_page))
    rng.shuffle(plans)
    for i, p in enumerate(plans):
        p.id = f"p{i + 1:04d}"
    return plans


def _header(page: render.Page, e: Entity, year: int | str, rng: random.Random) -> None:
    page.header(f"{e.name}  |  {e.kind.report} {year}", f"Page {rng.randrange(2, 40)}")


GENERIC_FILLERS = (
    "This section should be read together with the notes at the end of the report.",
    "Minor corrections to earlier publications are listed in the appendix.",
    "Definitions follow the guidance issued at the start of the reporting cycle.",
    "Comparisons with other years use the same method unless stated otherwise.",
    "Questions about this document may be sent to the records office.",
    "Rounding means that some totals differ slightly from the sum of their parts.",
)


def _fillers(e: Entity, rng: random.Random, n: int) -> list[str]:
    return rng.sample(e.kind.fillers + GENERIC_FILLERS, n)


def _prose(e: Entity, year: int, metrics: tuple[str, ...], style: render.Style,
           rng: random.Random) -> PagePlan:
    facts: set[Fact] = {("leader", e)}
    templates = (
        "In {year}, {ref} recorded {label} of {v}.",
        "{Label} for the year came to {v}.",
        "By the end of {year}, the {label} figure had reached {v}.",
        "Over the twelve months, {label} amounted to {v}.",
        "{Poss} {label} was measured at {v} for the period.",
    )
    sentences = []
    for key, t in zip(metrics, rng.sample(templates, len(metrics)), strict=True):
        m = e.metric(key)
        s = t.format(year=year, ref=e.ref, label=m.label, Label=_cap(m.label), v=e.amount(key, year),
                     Poss=_cap(_poss(e.ref)))
        facts.add(("value", e, key, year))
        if year - 1 in e.values[key] and rng.random() < 0.4:  # a comparison also displays last year's fact
            s = s[:-1] + f", compared with {e.amount(key, year - 1)} in {year - 1}."
            facts.add(("value", e, key, year - 1))
        sentences.append(s)
    title = rng.choice((f"{e.name}: the year {year} in review", f"{e.name} - {year} summary",
                        f"Review of {year}: {e.name}"))
    leader = rng.choice((f"{_cap(e.kind.leader)} {e.leader} described the year as steady.",
                         f"The report was presented by {e.kind.leader} {e.leader}."))
    fill = _fillers(e, rng, 7)
    sections = [("Overview", " ".join([fill[0], leader, sentences[0], fill[1]])),
                ("Results", " ".join([fill[2], *sentences[1:], fill[3]])),
                ("Outlook", " ".join([*fill[4:], f"Figures in this section come from {e.kind.source}."]))]

    def draw(page: render.Page) -> None:
        _header(page, e, year, rng)
        page.title(title)
        for heading, text in sections:
            page.paragraph(heading, bold=True, family=style.heading, size=style.body_size + 2, after=8)
            page.paragraph(text)

    return PagePlan("prose", e, (year,), metrics, style, draw, facts)


def _table(e: Entity, years: tuple[int, ...], metrics: tuple[str, ...], style: render.Style,
           rng: random.Random) -> PagePlan:
    facts: set[Fact] = {("value", e, k, y) for k in metrics for y in years}
    title = rng.choice((f"{e.name}: key figures {years[0]}-{years[-1]}",
                        f"Selected indicators for {e.ref}, {years[0]} to {years[-1]}"))
    intro = (f"The table below summarises the main indicators reported for {e.ref} over the years "
             f"{years[0]} to {years[-1]}. {' '.join(_fillers(e, rng, 2))}")
    note = f"Source: {e.kind.source}. Figures for the latest year are provisional."
    by_year = rng.random() < 0.5

    def draw(page: render.Page) -> None:
        _header(page, e, years[-1], rng)
        page.title(title)
        page.paragraph(intro)
        if by_year:  # rows are years
            page.table(["Year", *(e.metric(k).header for k in metrics)],
                       [[str(y), *(e.num(k, y) for k in metrics)] for y in years])
        else:  # rows are metrics
            page.table(["Indicator", *map(str, years)],
                       [[e.metric(k).header, *(e.num(k, y) for y in years)] for k in metrics])
        page.paragraph(note, size=style.body_size - 3, color=render.GREY)
        page.paragraph(" ".join(_fillers(e, rng, 3)))

    return PagePlan("table", e, years, metrics, style, draw, facts)


def _chart(kind: str, e: Entity, years: tuple[int, ...], key: str, style: render.Style,
           rng: random.Random) -> PagePlan:
    m = e.metric(key)
    facts: set[Fact] = {("value", e, key, y) for y in years} | {("series", e, key)}
    fig_no = rng.randrange(1, 12)
    caption = (f"Figure {fig_no}. {_cap(m.label)} of {e.ref}, {years[0]}-{years[-1]}. "
               f"Source: {e.kind.source}.")
    text = " ".join(_fillers(e, rng, 3))

    def draw(page: render.Page) -> None:
        _header(page, e, years[-1], rng)
        page.title(rng.choice((f"{_cap(m.label)} of {e.ref}", f"{e.name}: {m.label} over time")))
        vals = [e.values[key][y] for y in years]
        page.image(render.chart(kind, years, vals, [e.num(key, y) for y in years], f"{e.name}: {m.label}",
                                m.header, style.body, style.accent, (page.width, 470)))
        page.paragraph(caption, size=style.body_size - 2, color=render.GREY)
        page.paragraph(text)

    return PagePlan(kind, e, years, (key,), style, draw, facts)


def _form(e: Entity, year: int, metrics: tuple[str, ...], style: render.Style,
          rng: random.Random) -> PagePlan:
    facts: set[Fact] = {("value", e, k, year) for k in metrics} | {("leader", e), ("registry", e)}
    month = rng.choice(("February", "March", "April", "May"))
    date = f"{rng.randrange(1, 28)} {month} {year + 1}"

    def draw(page: render.Page) -> None:
        _header(page, e, year, rng)
        page.title(e.kind.form)
        page.paragraph(f"Complete all fields in block capitals or type. Return to {e.kind.source}.",
                       size=style.body_size - 2, color=render.GREY)
        page.fields([(f"Name of {e.kind.noun}", e.name), ("Registry no.", e.registry),
                     ("Reporting year", str(year)), ("Region", e.region), (_cap(e.kind.leader), e.leader)])
        page.paragraph("Reported figures", bold=True, after=10)
        page.fields([(e.metric(k).header, e.num(k, year)) for k in metrics])
        page.checkboxes(("Original return", "Amended return"), checked=rng.randrange(2))
        page.signature(e.leader, date)

    return PagePlan("form", e, (year,), metrics, style, draw, facts)


# --------------------------------------------------------------------------------------------- queries

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
    slots = {"ref": e.ref, "Name": e.name, "poss": _poss(e.ref), "noun": e.kind.noun, "leader": e.kind.leader,
             "metric": rng.choice(metric.aliases) if metric else "", "label": metric.label if metric else "",
             "year": year,
             "value": e.amount(metric.key, year) if metric and year else ""}
    text = _cap(rng.choice(TEMPLATES[kind]).format(**slots))
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


def _queries(config: GeneratedConfig, world: list[Entity], plans: list[PagePlan],
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


# ----------------------------------------------------------------------------------------------- output

def _params(config: GeneratedConfig) -> dict:
    d = asdict(config)
    return {**d, "years": list(d["years"]), "page_size": list(d["page_size"])}


def _digest(folder: Path) -> str:
    """sha256 over every file but generator.json, by relative path and content."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "generator.json"):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "generator.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(config: GeneratedConfig, folder: Path) -> bool:
    m = _read_manifest(folder)
    return m is not None and m.get("version") == GENERATOR_VERSION and m.get("params") == _params(config)


def verify(folder: Path) -> bool:
    """True when the folder's files still match the sha256 its generator.json recorded."""
    m = _read_manifest(Path(folder))
    return m is not None and m.get("sha256") == _digest(Path(folder))


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _build(config: GeneratedConfig, out: Path) -> None:
    rng = random.Random(config.seed)
    world = _world(config, rng)
    plans = _plans(config, world, rng)
    queries = _queries(config, world, plans, rng)
    (out / "pages").mkdir()
    corpus = []
    w, h = config.page_size
    canvas = (DRAW_WIDTH, round(DRAW_WIDTH * h / w))  # same aspect, fixed width: one layout for every size
    for i, p in enumerate(plans):
        page = render.Page(canvas, p.style)
        p.draw(page)
        if page.y > canvas[1] - 70:  # a layout bug, not bad input: never write a page with clipped facts
            raise RuntimeError(f"page {p.id} ({p.layout}) overflows a {canvas} page")
        page.footer(f"{p.entity.kind.source.removeprefix('the ')} - {p.entity.kind.report.lower()}")
        img = page.img if canvas == (w, h) else page.img.resize((w, h), Image.Resampling.LANCZOS)
        img = render.scan(img, np.random.default_rng([config.seed, i]), config.noise)
        (out / "pages" / f"{p.id}.png").write_bytes(render.png_bytes(img))
        corpus.append({"_id": p.id, "title": "", "text": "", "image": f"pages/{p.id}.png", "metadata": {
            "entity": p.entity.name, "entity_kind": p.entity.kind.name,
            "year": p.years[0] if len(p.years) == 1 else None, "years": list(p.years),
            "metrics": [p.entity.metric(k).label for k in p.metrics], "layout": p.layout}})
    _jsonl(out / "corpus.jsonl", corpus)
    _jsonl(out / "queries.jsonl", [{"_id": q.id, "text": q.text, "metadata": {
        "kind": q.kind, "answer": q.answer, "entity": q.entity.name,
        "metric": q.entity.metric(q.metric).label if q.metric else None, "year": q.year}} for q in queries])
    (out / "qrels").mkdir()
    qrels = [f"{q.id}\t{pid}\t1\n" for q in queries for pid in q.relevant]
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels))
    manifest = {"generator": "tasks.generated", "version": GENERATOR_VERSION, "params": _params(config),
                "counts": {"pages": len(plans), "queries": len(queries), "qrels": len(qrels)},
                "sha256": _digest(out),
                # Informational: PNG bytes depend on these (FreeType via Pillow, Agg via matplotlib).
                "environment": {"python": sys.version.split()[0], "pillow": PIL.__version__,
                                "matplotlib": matplotlib.__version__, "numpy": np.__version__}}
    (out / "generator.json").write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the folder done


def generate(config: GeneratedConfig, out_dir: Path | str) -> Path:
    """Write the task to out_dir atomically; an out_dir already generated with the same config is reused."""
    out_dir = Path(out_dir)
    if _is_current(config, out_dir):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and _read_manifest(out_dir) is None:
        raise FileExistsError(f"{out_dir} is not empty and holds no generator.json: refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _build(config, tmp)
        if out_dir.exists():  # an older version or other parameters: move it aside, then swap in
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if not _is_current(config, out_dir):  # lost a race to another writer with other params
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
