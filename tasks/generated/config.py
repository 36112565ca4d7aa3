"""The generated task's parameters and the constants its parts share (see tasks/generated/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

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
