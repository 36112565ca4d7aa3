"""Every prompt the synthetic-data engine sends, each with a stable id (recorded with every output).

The instruction texts are the seeds' own, verbatim from RECIPES.md. Each has up to three variants:
- ``vlm``: the verbatim prompt, for models that see the page image;
- ``text``: the same prompt where the page reaches the model as OCR or corpus text ("page" for "image");
- ``fewshot``: a completion prompt for base models that are not instruction-tuned (such as the packaged Gemma 3
  270M), which continue a pattern far more reliably than they follow an instruction.
``<page:N>`` marks where page N goes (the image for a VLM, its text otherwise); ``{query}`` and ``{passage}`` are
filled by the operations. Change a template's text and you must change its id: stores key records by id.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE0, PAGE1 = "<page:0>", "<page:1>"


@dataclass(frozen=True)
class Template:
    id: str
    text: str
    system: str | None = None
    prefill: str = ""  # start of the answer: the model continues from here (inside the assistant turn for chat)


# --- SynTR pseudo-queries ---------------------------------------------------------------------------------------
SYNTR_SPECIFIC = "Generate a question that the following image can answer. Avoid generating general questions."
SYNTR_GENERAL = (
    "Imagine a user is researching a topic and is looking for documents that could provide helpful background or "
    "support. Given the image, generate a search query that would naturally lead a retrieval system to include this "
    "document. The query should reflect a topic of interest, not necessarily a direct fact the image contains. "
    "Present the query in the form of natural questions. Do not make any commentary about the search query. "
    "Only respond with the query."
)


def _as_text(instruction: str) -> str:
    return instruction.replace("the following image", "the following page").replace("Given the image", "Given the page")


# Two short worked examples: enough for a 270M base model to write one question per page and stop at a newline.
_FEWSHOT_PAGES = (
    ("Annual report 2019. Revenue grew to 41 million dollars, up from 35 million in 2018, driven by exports of "
     "farm machinery to Brazil and Kenya.",
     "What was the revenue in 2019?",
     "How did exports of farm machinery affect company revenue?"),
    ("Lesson 4: Photosynthesis. Plants turn light, water and carbon dioxide into glucose and oxygen. The reaction "
     "takes place in the chloroplasts of leaf cells.",
     "Where in the leaf does photosynthesis take place?",
     "How do plants make their own food from sunlight?"),
)


def _fewshot_queries(kind: str) -> str:
    idx = 1 if kind == "specific" else 2
    head = ("Write a specific question that the page answers." if kind == "specific"
            else "Write a natural search question that would lead to the page.")
    shots = "".join(f"Page: {p[0]}\nQuestion: {p[idx]}\n\n" for p in _FEWSHOT_PAGES)
    return f"{head}\n\n{shots}Page: {PAGE0}\nQuestion:"


QUERY_TEMPLATES: dict[tuple[str, str], Template] = {
    ("specific", "vlm"): Template("syntr.specific.vlm.v1", f"{PAGE0}\n{SYNTR_SPECIFIC}"),
    ("specific", "text"): Template("syntr.specific.text.v1", f"{PAGE0}\n{_as_text(SYNTR_SPECIFIC)}"),
    ("specific", "fewshot"): Template("syntr.specific.fewshot.v1", _fewshot_queries("specific")),
    ("general", "vlm"): Template("syntr.general.vlm.v1", f"{PAGE0}\n{SYNTR_GENERAL}"),
    ("general", "text"): Template("syntr.general.text.v1", f"{PAGE0}\n{_as_text(SYNTR_GENERAL)}"),
    ("general", "fewshot"): Template("syntr.general.fewshot.v1", _fewshot_queries("general")),
}

# --- SynTR graded judge -----------------------------------------------------------------------------------------
SYNTR_JUDGE = ("For the following question, judge whether it is 'Highly Relevant', 'Somewhat Relevant', or "
               "'Not Relevant' to the image. Question: {query}")
_FEWSHOT_JUDGE = (
    "Judge whether each question is Highly Relevant, Somewhat Relevant, or Not Relevant to the page.\n\n"
    f"Page: {_FEWSHOT_PAGES[0][0]}\nQuestion: What was the revenue in 2019?\nJudgement: Highly Relevant\n\n"
    f"Page: {_FEWSHOT_PAGES[1][0]}\nQuestion: What gas do plants release?\nJudgement: Somewhat Relevant\n\n"
    f"Page: {_FEWSHOT_PAGES[0][0]}\nQuestion: Where does photosynthesis take place?\nJudgement: Not Relevant\n\n"
    f"Page: {PAGE0}\nQuestion: {{query}}\nJudgement:"
)
GRADED_TEMPLATES: dict[str, Template] = {
    "vlm": Template("syntr.judge.vlm.v1", f"{PAGE0}\n{SYNTR_JUDGE}"),
    "text": Template("syntr.judge.text.v1", f"{PAGE0}\n{_as_text(SYNTR_JUDGE).replace('the image', 'the page')}"),
    "fewshot": Template("syntr.judge.fewshot.v1", _FEWSHOT_JUDGE),
}

# --- yes/no relevance (pointwise judge and Syntriever self-verification) ----------------------------------------
# The "passage" is a page (its image or its text) or a generated passage wrapped as a text page.
SYNTRIEVER_VERIFY = ("Question: {query}\nPassage: " + PAGE0 + "\nIs the above passage relevant to the aforementioned "
                     "question? Answer with yes or no.")
_FEWSHOT_YESNO = (
    "Answer yes if the passage is relevant to the question, no otherwise.\n\n"
    f"Passage: {_FEWSHOT_PAGES[0][0]}\nQuestion: What was the revenue in 2019?\nRelevant: yes\n\n"
    f"Passage: {_FEWSHOT_PAGES[0][0]}\nQuestion: Where does photosynthesis take place?\nRelevant: no\n\n"
    f"Passage: {PAGE0}\nQuestion: {{query}}\nRelevant:"
)
YESNO_TEMPLATES: dict[str, Template] = {
    "chat": Template("syntriever.verify.v1", SYNTRIEVER_VERIFY),
    "fewshot": Template("yesno.fewshot.v1", _FEWSHOT_YESNO),
}
YES_WORDS, NO_WORDS = ("yes", "Yes", "YES"), ("no", "No", "NO")
# Few-shot templates put the page first: llama.cpp then reuses the page's cached prefix across its queries.

# --- query likelihood: log p(query | page), no instruction needed ----------------------------------------------
QUERY_LIKELIHOOD = Template("ql.v1", f"Page: {PAGE0}\nA question that this page answers:")
# The same with no page: log p(query) alone, subtracted to compare scores across queries (pointwise PMI).
QUERY_PRIOR = Template("ql.prior.v1", "Page:\nA question that this page answers:")

# --- Syntriever synthesis ---------------------------------------------------------------------------------------
SYNTRIEVER_PERSONA = "You are an expert with broad and accurate knowledge. Answer carefully."
SYNTRIEVER_RELEVANT = (
    "Write a passage that elaborates on the question. Ensure that no false information is provided; all content "
    "must be entirely accurate. Present everything you are aware of, offering a comprehensive and detailed "
    "explanation. Do not include any unverified or speculative information.\nQuestion: {query}")
SYNTRIEVER_IRRELEVANT = ("Write a passage that contains plausible but irrelevant context given the question.\n"
                         "Question: {query}")
SYNTRIEVER_COT = "{query}\nLet's think step-by-step"
SYNTRIEVER_TEMPLATES: dict[tuple[str, str], Template] = {
    ("relevant", "chat"): Template("syntriever.relevant.v1", SYNTRIEVER_RELEVANT, system=SYNTRIEVER_PERSONA),
    ("irrelevant", "chat"): Template("syntriever.irrelevant.v1", SYNTRIEVER_IRRELEVANT, system=SYNTRIEVER_PERSONA),
    ("cot", "chat"): Template("syntriever.cot.v1", SYNTRIEVER_COT, system=SYNTRIEVER_PERSONA),
    # Base models: frame each as the start of a document the model continues.
    ("relevant", "fewshot"): Template(
        "syntriever.relevant.fewshot.v1",
        "An expert answers questions with accurate, detailed passages.\n\nQuestion: {query}\nPassage:"),
    ("irrelevant", "fewshot"): Template(
        "syntriever.irrelevant.fewshot.v1",
        "A passage on a related topic that does not answer the question.\n\nQuestion: {query}\nPassage:"),
    ("cot", "fewshot"): Template("syntriever.cot.fewshot.v1", "Question: {query}\nLet's think step-by-step."),
}

# --- pairwise preference (Syntriever stage 2) -------------------------------------------------------------------
PAIRWISE = ("Given a question and two passages, choose which passage is more proper to answer the given question. "
            "Only answer as Passage #1 or Passage #2.\nQuestion: {query}\nPassage #1: " + PAGE0
            + "\nPassage #2: " + PAGE1)
PAIRWISE_TEMPLATES: dict[str, Template] = {
    # The answer starts with "Passage #", so the next token is the choice: read its probability.
    "chat": Template("syntriever.pairwise.v1", PAIRWISE, prefill="Passage #"),
    "fewshot": Template("syntriever.pairwise.fewshot.v1", PAIRWISE + "\nAnswer: Passage #"),
}
