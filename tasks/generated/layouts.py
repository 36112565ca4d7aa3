"""The generated task's pages: a plan per page (entity, years, metrics, style) and its drawing in one of five layouts
(prose, table, bar chart, line chart, form); each plan records exactly the facts its page displays."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks import render
from tasks.generated.config import LAYOUTS, GeneratedConfig
from tasks.generated.world import Entity, Fact, cap, poss


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


def plan_pages(config: GeneratedConfig, world: list[Entity], rng: random.Random) -> list[PagePlan]:
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
        s = t.format(year=year, ref=e.ref, label=m.label, Label=cap(m.label), v=e.amount(key, year),
                     Poss=cap(poss(e.ref)))
        facts.add(("value", e, key, year))
        if year - 1 in e.values[key] and rng.random() < 0.4:  # a comparison also displays last year's fact
            s = s[:-1] + f", compared with {e.amount(key, year - 1)} in {year - 1}."
            facts.add(("value", e, key, year - 1))
        sentences.append(s)
    title = rng.choice((f"{e.name}: the year {year} in review", f"{e.name} - {year} summary",
                        f"Review of {year}: {e.name}"))
    leader = rng.choice((f"{cap(e.kind.leader)} {e.leader} described the year as steady.",
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
    caption = (f"Figure {fig_no}. {cap(m.label)} of {e.ref}, {years[0]}-{years[-1]}. "
               f"Source: {e.kind.source}.")
    text = " ".join(_fillers(e, rng, 3))

    def draw(page: render.Page) -> None:
        _header(page, e, years[-1], rng)
        page.title(rng.choice((f"{cap(m.label)} of {e.ref}", f"{e.name}: {m.label} over time")))
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
                     ("Reporting year", str(year)), ("Region", e.region), (cap(e.kind.leader), e.leader)])
        page.paragraph("Reported figures", bold=True, after=10)
        page.fields([(e.metric(k).header, e.num(k, year)) for k in metrics])
        page.checkboxes(("Original return", "Amended return"), checked=rng.randrange(2))
        page.signature(e.leader, date)

    return PagePlan("form", e, (year,), metrics, style, draw, facts)
