"""The generated task's world: entities of three kinds (company, city, species) with invented names and a value
per metric and year, drawn from one seeded RNG."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tasks.generated.config import GeneratedConfig


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


def build_world(config: GeneratedConfig, rng: random.Random) -> list[Entity]:
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


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def poss(s: str) -> str:
    return s + ("'" if s.endswith("s") else "'s")
