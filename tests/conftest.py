"""Shared fixtures: a private cache per test session, and small BEIR folders made on the spot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import harness  # noqa: E402,F401  (torchvision fix before anything imports it)

FACTS = [
    ("The Orvell river floods every spring and feeds the rice farms of the valley.",
     "When does the Orvell river flood?"),
    ("Tamsin Corp reported revenue of 41 million in 2019, up from 35 million.",
     "What was Tamsin Corp revenue in 2019?"),
    ("The Kelda telescope observes distant galaxies in infrared light.",
     "Which light does the Kelda telescope use?"),
    ("Brightwater school teaches chemistry and physics to 300 pupils.",
     "How many pupils attend Brightwater school?"),
    ("Penrose bakery sells sourdough bread and almond croissants every morning.",
     "What bread does Penrose bakery sell?"),
    ("The Zorvan glacier lost twelve metres of ice thickness since 1990.",
     "How much ice did the Zorvan glacier lose?"),
]


def write_beir(root: Path, docs: list[dict], queries: dict[str, str], qrels: list[tuple[str, str, int]],
               split: str = "test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def render_page(text: str, path: Path, size: tuple[int, int] = (640, 320)) -> Path:
    """A legible page image with the text in a packaged TrueType font (matplotlib's DejaVu)."""
    import textwrap

    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), 22)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(textwrap.wrap(text, 48)):
        draw.text((24, 24 + 34 * i), line, fill="black", font=font)
    image.save(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("harness-cache"))


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    docs = [{"_id": f"d{i}", "title": "", "text": fact} for i, (fact, _) in enumerate(FACTS)]
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    return write_beir(tmp_path / "textset", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(len(FACTS))])


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "pageset"
    (root / "pages").mkdir(parents=True)
    docs = []
    for i, (fact, _) in enumerate(FACTS):
        render_page(fact, root / "pages" / f"p{i}.png")
        docs.append({"_id": f"p{i}", "text": "", "image": f"pages/p{i}.png"})
    queries = {f"q{i}": q for i, (_, q) in enumerate(FACTS)}
    return write_beir(root, docs, queries, [(f"q{i}", f"p{i}", 1) for i in range(len(FACTS))])
