"""Variants: a training recipe and its MTEB model wrapper, one folder each under ``models/``.

A variant folder holds ``recipe.py`` (``Config``, a pydantic model, and ``train(backbone, corpus, config,
out_dir) -> checkpoint folder or None``) and ``model.py`` (``load_model(backbone, checkpoint, cache) ->
HarnessEncoder`` with the variant's ModelMeta). A new variant is one new folder; a folder outside
``models/`` can be named by its path.

Recipes receive a ``TrainingCorpus``: the pages of a corpus and, only for supervised recipes given a
training split, that split's queries. Evaluation queries and qrels are never part of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from harness.backbones import Page

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class VariantError(ValueError):
    pass


@dataclass(frozen=True)
class TrainingCorpus:
    """What a recipe may see. ``pages`` load lazily (images open on access)."""

    name: str
    pages: list[Page]
    train_queries: dict[str, str] = field(default_factory=dict)  # a training split, never evaluation
    train_qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    # page id -> its document (corpus metadata doc_id) when every page has one: validation then also ranks each
    # held-out query among its own document's pages, as a within-document task does
    page_docs: dict[str, str] = field(default_factory=dict)

    def docs_of(self, page_ids: Sequence[str]) -> list[str] | None:
        """The documents of ``page_ids``, or None when the corpus has none (validation's ``page_groups``)."""
        return [self.page_docs[p] for p in page_ids] if self.page_docs else None


@dataclass(frozen=True)
class Variant:
    name: str
    folder: Path
    recipe: ModuleType
    model: ModuleType


def list_variants() -> list[str]:
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.py").is_file() and (p / "recipe.py").is_file())


def get_variant(name_or_path: str) -> Variant:
    path = Path(name_or_path)
    if (path / "model.py").is_file():  # a folder outside models/
        return Variant(path.name, path.resolve(), _load_file(path / "recipe.py", f"{path.name}_recipe"),
                       _load_file(path / "model.py", f"{path.name}_model"))
    if name_or_path not in list_variants():
        raise VariantError(f"unknown variant {name_or_path!r}; known: {', '.join(list_variants())} "
                           "(or give the path of a folder with recipe.py and model.py)")
    return Variant(name_or_path, MODELS_DIR / name_or_path,
                   importlib.import_module(f"models.{name_or_path}.recipe"),
                   importlib.import_module(f"models.{name_or_path}.model"))


def _load_file(path: Path, module_name: str) -> ModuleType:
    if not path.is_file():
        raise VariantError(f"{path}: missing (a variant folder needs recipe.py and model.py)")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
