"""Answer metrics: exact match and token F1 (SQuAD v1.1's official definitions) and ANLS (DocVQA's, threshold 0.5).

No offline package carries them (HF ``evaluate`` downloads its metric scripts), so they are written here, small and
standard, with three additions for document-QA references as MMLongBench-Doc writes them:
- numbers: a thousands comma ("1,000") and a decimal point ("18.29") survive normalisation as a number, so
  "1,000" equals "1000" while "1.5" does not equal "15" (SQuAD's punctuation stripping would make them equal);
- lists: a reference such as "['a', 'b']" is a set of items; exact match needs the same set, F1 is over the tokens
  of all items, ANLS pairs each reference item with its best predicted item and divides by the longer list;
- unanswerable: "Not answerable" as reference is matched by any abstention ("not answerable", "unanswerable",
  "cannot be answered", ...), scoring 1 on every metric; an abstention on an answerable question scores 0.
"""

from __future__ import annotations

import ast
import re
import string
from collections import Counter
from collections.abc import Sequence

ANLS_THRESHOLD = 0.5
_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_POINT = "\u2024"  # stands in for a decimal point while punctuation is removed
_ABSTAIN = re.compile(r"^(not answerable|unanswerable|(is |are )?not (mentioned|stated|given|provided)|"
                      r"(it )?cannot be (answered|determined)|no answer|unknown|none of the pages?.*|"
                      r"(the )?(answer|information) is not (available|provided|given).*)$")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation (lower case, no punctuation, no articles, single spaces), keeping numbers whole."""
    text = _DECIMAL.sub(_POINT, _THOUSANDS.sub("", text.lower()))
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text.replace(_POINT, "."))
    return " ".join(text.split())


def is_unanswerable(text: str) -> bool:
    return bool(_ABSTAIN.match(normalize_answer(text)))


def parse_list(text: str) -> list[str] | None:
    """The items of a list answer written as a Python list literal ("['a', 'b']"), else None."""
    s = text.strip()
    if not (s.startswith("[") and s.endswith("]")):
        return None
    try:
        value = ast.literal_eval(s)
    except (ValueError, SyntaxError):
        value = [p.strip().strip("'\"") for p in s[1:-1].split(",")]
    if not isinstance(value, (list, tuple)):
        return None
    return [str(v).strip() for v in value if str(v).strip()]


def _items(prediction: str) -> list[str]:
    """A prediction's items when the reference is a list: a list literal, or text split on commas/semicolons/'and'/
    new lines (a thousands comma is not a separator)."""
    parsed = parse_list(prediction)
    if parsed is not None:
        return parsed
    parts = re.split(r"(?<!\d),(?!\d{3}\b)|;|\n|\band\b", prediction)
    return [p.strip(" .") for p in parts if p.strip(" .")]


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if not pred or not ref:
        return float(pred == ref)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, reference: str, threshold: float = ANLS_THRESHOLD) -> float:
    """DocVQA's similarity for one pair: 1 - normalised edit distance on lower-cased, space-collapsed strings,
    0 when that distance reaches the threshold."""
    p, r = " ".join(prediction.lower().split()), " ".join(reference.lower().split())
    if not p and not r:
        return 1.0
    distance = levenshtein(p, r) / max(len(p), len(r))
    return 1.0 - distance if distance < threshold else 0.0


def _list_scores(prediction: str, items: list[str]) -> dict[str, float]:
    pred = _items(prediction)
    em = float(sorted({normalize_answer(x) for x in pred}) == sorted({normalize_answer(x) for x in items}))
    f1 = token_f1(" ".join(pred), " ".join(items))
    best = [max((anls(p, r) for p in pred), default=0.0) for r in items]
    return {"em": em, "f1": f1, "anls": sum(best) / max(len(items), len(pred), 1)}


def score_answer(prediction: str, references: str | Sequence[str]) -> dict[str, float]:
    """EM, F1 and ANLS of ``prediction`` against the reference(s): the best over references, as SQuAD and DocVQA
    take it."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("score_answer needs at least one reference answer")
    best = {"em": 0.0, "f1": 0.0, "anls": 0.0}
    for ref in refs:
        if is_unanswerable(ref) or is_unanswerable(prediction):
            ok = float(is_unanswerable(ref) and is_unanswerable(prediction))
            scores = {"em": ok, "f1": ok, "anls": ok}
        elif (items := parse_list(ref)) is not None:
            scores = _list_scores(prediction, items)
        else:
            scores = {"em": exact_match(prediction, ref), "f1": token_f1(prediction, ref),
                      "anls": anls(prediction, ref)}
        best = {k: max(best[k], scores[k]) for k in best}
    return best
