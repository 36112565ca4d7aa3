"""Typed run configs (YAML). A wrong key or value is an error naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BackboneSpec(Strict):
    family: str
    config: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None  # a saved backbone folder instead of family + config


class VariantSpec(Strict):
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    # The corpus whose pages (only) a recipe trains on; default: each evaluated task's own corpus.
    train_corpus: str | dict[str, Any] | None = None
    # Indices into the run's backbones list this variant applies to (default: all of them).
    backbones: list[int] | None = None


class RunConfig(Strict):
    name: str = "run"
    results: str = "results"
    seed: int = 0
    overwrite: bool = False
    backbones: list[BackboneSpec] = Field(min_length=1)
    variants: list[VariantSpec] = Field(default_factory=lambda: [VariantSpec(name="base")])
    tasks: list[str | dict[str, Any]] = Field(min_length=1)
    # How vector models search each corpus (harness.evaluate.search): every model is evaluated once per entry
    # (encodings are cached, so extra strategies cost search time only); the bm25 row is always exhaustive.
    searches: list[str] = Field(default_factory=lambda: ["exhaustive"], min_length=1)

    @field_validator("searches")
    @classmethod
    def _known_searches(cls, value: list[str]) -> list[str]:
        from harness.evaluate.search import SearchSpec

        for text in value:
            SearchSpec.parse(text)  # a SearchSpecError (ValueError) names the bad entry and the grammar
        return value

    @model_validator(mode="after")
    def _backbone_indices(self) -> RunConfig:
        for i, v in enumerate(self.variants):
            bad = [b for b in v.backbones or [] if not 0 <= b < len(self.backbones)]
            if bad:
                raise ValueError(f"variants.{i}.backbones: no backbone with index {bad} "
                                 f"(the run has {len(self.backbones)})")
        return self

    @field_validator("variants", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value


def format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"])
        lines.append(f"{source}: {key}: {e['msg']}")
    return "\n".join(lines)


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, str(path))) from None
