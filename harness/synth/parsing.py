"""Turn raw model outputs into values. Every parser returns None for an answer it cannot read: the caller counts
it (status "unparseable" or "empty") and never guesses a value for it."""

from __future__ import annotations

import re

GRADES = {"highly": 2, "somewhat": 1, "not": 0}  # SynTR: highly -> positive, not -> negative, somewhat -> dropped

_PREFIX = re.compile(r"^\s*(?:[-*\u2022>#]+|\d+[.)]|\(?[a-z]\)|(?:search\s+)?(?:question|query|q)\s*\d*\s*[:.-])\s*",
                     re.IGNORECASE)
_GRADE = re.compile(r"\b(highly|very|somewhat|partially|not|irrelevant|non[- ]?relevant)\b[\s'\"]*(relevant)?",
                    re.IGNORECASE)
_CHOICE = re.compile(r"(?:passage|#)\s*#?\s*([12])\b|^\s*([12])\b", re.IGNORECASE)


def clean_query(raw: str) -> str | None:
    """The first non-empty line with list markers, "Question:" labels and quotes removed; None if nothing is left.

    Small models often run on after the question (a second question, an answer): only the first line counts.
    """
    for line in raw.strip().splitlines():
        text = line.strip()
        for _ in range(3):  # "1. Question: ..." carries two prefixes
            text = _PREFIX.sub("", text, count=1).strip()
        text = text.strip("\"'`\u201c\u201d ").strip()
        if text:
            return text if re.search(r"[^\W\d_]{2}", text) else None
    return None


def query_key(query: str) -> str:
    """Normalised form for duplicate detection: case, punctuation and spacing do not make a new query."""
    return " ".join(re.findall(r"\w+", query.lower()))


def parse_grade(raw: str) -> str | None:
    """'Highly Relevant' / 'Somewhat Relevant' / 'Not Relevant' (any case, quoted or not) -> highly/somewhat/not.

    The first label mentioned wins ("Not Relevant. It is not highly relevant..." is "not").
    """
    for match in _GRADE.finditer(raw):
        word, relevant = match.group(1).lower(), match.group(2)
        if word in ("irrelevant",) or word.startswith("non"):
            return "not"
        if relevant:  # "very relevant" and "partially relevant" are the same judgements in other words
            return {"very": "highly", "partially": "somewhat"}.get(word, word)
    first = raw.strip().split(maxsplit=1)
    if first and first[0].strip(".,:;'\"").lower() in GRADES:  # a bare "Highly" / "Not"
        return first[0].strip(".,:;'\"").lower()
    return None


def parse_yes_no(raw: str) -> bool | None:
    words = re.findall(r"[a-z]+", raw.lower())
    if not words:
        return None
    return {"yes": True, "no": False}.get(words[0])


def parse_choice(raw: str) -> int | None:
    """'Passage #2' / '#1' / '2' -> 1 or 2."""
    match = _CHOICE.search(raw)
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def clean_passage(raw: str) -> str | None:
    """A generated passage: stripped, None when empty or without letters."""
    text = raw.strip()
    return text if re.search(r"[^\W\d_]{2}", text) else None


def first_paragraph(raw: str) -> str | None:
    """A base model's passage: its text up to the first blank line, blank lines before it skipped; None when empty
    or without letters."""
    return clean_passage(re.split(r"\n[ \t]*\n", raw.strip(), maxsplit=1)[0])
