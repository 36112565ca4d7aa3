"""Answer metrics against hand-computed values, on answers written as MMLongBench-Doc writes them (Str, Int, Float,
List as a Python list literal, "Not answerable")."""

from __future__ import annotations

import pytest

from harness.answers.metrics import (
    anls,
    exact_match,
    is_unanswerable,
    levenshtein,
    normalize_answer,
    parse_list,
    score_answer,
    token_f1,
)


def test_squad_normalisation_keeps_numbers_whole() -> None:
    assert normalize_answer("The  Latinos, interviewed!") == "latinos interviewed"
    assert normalize_answer("1,000") == normalize_answer("1000") == "1000"
    assert normalize_answer("18.29%") == "18.29"
    assert normalize_answer("1.5") != normalize_answer("15")  # SQuAD's plain stripping would make these equal
    assert normalize_answer("0-375 miles") == "0375 miles"  # a hyphen is punctuation, as in SQuAD


def test_exact_match_and_f1_by_hand() -> None:
    assert exact_match("1000", "1,000") == 1.0
    assert exact_match("15", "1.5") == 0.0
    # pred {answer, is, 18.29} vs ref {18.29}: P 1/3, R 1 -> F1 = 2/3 * 1 / (4/3) = 0.5
    assert token_f1("The answer is 18.29%", "18.29%") == pytest.approx(0.5)
    # pred {berlin, school} vs 5 reference tokens: P 1, R 2/5 -> F1 = 0.8 / 1.4
    assert token_f1("Berlin school", "Berlin School of Experimental Psychology") == pytest.approx(0.8 / 1.4)
    assert token_f1("", "8") == 0.0 and token_f1("", "") == 1.0


def test_anls_by_hand() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert anls("Less well-off", "less  well-off") == 1.0  # case and spacing do not count
    assert anls("1000", "1,000") == pytest.approx(1 - 1 / 5)  # one insertion over 5 characters
    assert anls("15", "1.5") == pytest.approx(1 - 1 / 3)
    assert anls("Berlin", "Berlin School of Experimental Psychology") == 0.0  # distance 34/40 >= 0.5
    assert anls("abcd", "abxy") == 0.0  # distance exactly 0.5: at the threshold counts as 0


def test_lists_as_mmlongbench_writes_them() -> None:
    assert parse_list("['Circle', 'Rectangle']") == ["Circle", "Rectangle"]
    assert parse_list("['Agricultural Drough', 'Forest Fire']") == ["Agricultural Drough", "Forest Fire"]
    assert parse_list("['Iterative Retrieval ', 'Recursive Retrieval ']") == ["Iterative Retrieval",
                                                                                "Recursive Retrieval"]
    assert parse_list("Circle") is None
    ref = "['Circle', 'Rectangle']"
    assert score_answer("Rectangle and circle", ref) == {"em": 1.0, "f1": 1.0, "anls": 1.0}  # order does not count
    assert score_answer("['rectangle', 'circle']", ref)["em"] == 1.0
    # one of two items: EM 0; F1 on tokens {time} vs {economist, time}: P 1, R 1/2 -> 2/3;
    # ANLS: TIME matches TIME (1), nothing matches "The Economist" (0), over max(2, 1) items -> 0.5
    assert score_answer("TIME", "['The Economist', 'TIME']") == pytest.approx({"em": 0.0, "f1": 2 / 3, "anls": 0.5})
    # an extra item costs ANLS too: 2 matched over max(2, 3) items
    assert score_answer("Circle, Rectangle, Square", ref)["anls"] == pytest.approx(2 / 3)
    # a thousands comma is not an item separator
    assert score_answer("1,000 and 20", "['1000', '20']")["em"] == 1.0


def test_unanswerable() -> None:
    assert is_unanswerable("Not answerable") and is_unanswerable("It cannot be answered.")
    assert not is_unanswerable("8")
    assert score_answer("not answerable", "Not answerable") == {"em": 1.0, "f1": 1.0, "anls": 1.0}
    assert score_answer("Unanswerable.", "Not answerable")["em"] == 1.0
    assert score_answer("42", "Not answerable") == {"em": 0.0, "f1": 0.0, "anls": 0.0}
    # abstaining on an answerable question is wrong on every metric (its ANLS would otherwise be partial)
    assert score_answer("Not answerable", "Not available") == {"em": 0.0, "f1": 0.0, "anls": 0.0}


def test_best_over_references_and_numbers() -> None:
    assert score_answer("63", ["sixty-three", "63"])["em"] == 1.0
    assert score_answer("1,234 million", "1234 million") == pytest.approx(
        {"em": 1.0, "f1": 1.0, "anls": 1 - 1 / 13})
    with pytest.raises(ValueError):
        score_answer("x", [])
