"""Typed run configs (YAML). A wrong key or value is an error naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.synth.backends import BackendSpec as BackendSpec_  # the answerer (BackendSpec here is a backbone's)


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


def _default_answerer() -> BackendSpec_:
    return BackendSpec_(kind="hf")


class AnsweredVariant(Strict):
    name: str
    backbones: list[int] | None = None  # its rows on these backbone indices only (default: answers.backbones)


class AnswersSpec(Strict):
    """Answer-level evaluation inside a run (harness/answers/run.py): each answered row's top-k pages go to one
    answerer, its answers are scored against the task's reference answers; oracle and no-retrieval rows once per
    (task, answerer). Only tasks whose queries carry metadata.answer are answered."""

    # A synth backend (harness.synth.backends.BackendSpec); default: the packaged Gemma 3 270M GGUF dequantised
    # through transformers, the same network an svrag row answers with (its LoRA adapter disabled).
    answerer: BackendSpec_ = Field(default_factory=_default_answerer)
    ks: list[int] = Field(default_factory=lambda: [1, 3], min_length=1)
    limit: int | None = Field(default=None, ge=1)  # the first N questions of each task
    # Rows answered: variants (default: all), each a name or {name, backbones: [indices]} (a name the run lacks
    # answers nothing, it is no error), on backbone indices (default: all).
    variants: list[AnsweredVariant] | None = None
    backbones: list[int] | None = None
    tasks: list[int] | None = None  # indices into the run's tasks (default: every task whose queries carry answers)
    oracle: bool = True
    no_retrieval: bool = True
    max_new_tokens: int = Field(default=32, ge=1)

    @field_validator("variants", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    def answers_row(self, variant_names: list[str], backbone_index: int) -> bool:
        """Whether the row of this variant (its registered name or row label) on this backbone is answered."""
        if self.variants is None:
            return self.backbones is None or backbone_index in self.backbones
        for v in self.variants:
            if v.name in variant_names:
                allowed = v.backbones if v.backbones is not None else self.backbones
                if allowed is None or backbone_index in allowed:
                    return True
        return False

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"every k must be at least 1 (got {value}; the no-retrieval row is k 0 already)")
        return list(dict.fromkeys(value))


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
    # Answer-level evaluation of the rows (absent: none); rows are answered under the first search only.
    answers: AnswersSpec | None = None

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
        lists = {"answers.backbones": self.answers.backbones} | {
            f"answers.variants.{i}.backbones": v.backbones for i, v in enumerate(self.answers.variants or [])
        } if self.answers else {}
        for key, indices in lists.items():
            if bad := [b for b in indices or [] if not 0 <= b < len(self.backbones)]:
                raise ValueError(f"{key}: no backbone with index {bad} (the run has {len(self.backbones)})")
        if bad := [t for t in (self.answers.tasks or []) if not 0 <= t < len(self.tasks)] if self.answers else []:
            raise ValueError(f"answers.tasks: no task with index {bad} (the run has {len(self.tasks)})")
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
