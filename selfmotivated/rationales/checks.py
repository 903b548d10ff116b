"""The consistency checks of a rationale: its final-answer line, answer forcing, hint leaks.

A hinted rationale is consistent when, with the hint removed, it leads to the answer it was written
for. The answer it states is a weak test for a small model, which often writes reasoning and then an
answer the reasoning contradicts (docs/ANCHORS.md). Answer forcing is the stronger one: drop the
rationale's own final-answer line, put its body after the UNHINTED question prompt (the zero-shot
evaluation prompt, whatever prompt sampled it), append "The answer is" and let the model continue
greedily for a few tokens; the answer it completes is where the reasoning leads. Free rationales are
forced too: a small model can state the gold after reasoning that leads elsewhere. The forcing
prompt has the same shape as an SFT training example (prompt, body, our final-answer line), so it
asks exactly what the model will later be taught to do.
"""

from __future__ import annotations

import re

from ..answers import ANSWER_PREFIX, extract_answer, format_answer_line

# A final-answer statement: "The answer is", "So the final answer is", "Answer:", "the answer (yes or no) is".
_ANSWER_STATEMENT_RE = re.compile(
    r"(?:\b(?:so|thus|therefore|hence)\b,?\s+)?"
    r"\b(?:the\s+)?(?:final\s+|correct\s+)?answer\b[*_]*"
    r"(?:\s*\([^()\n]{2,40}\))?\s*"
    r"(?:is(?!\s+not\b)|was(?!\s+not\b)|would\s+be|will\s+be|:)",
    re.I,
)
# A model that keeps going invents the next question; nothing from there on belongs to the rationale.
_NEW_QUESTION_RE = re.compile(r"\n[ \t>#]*(?:Q|Question|Human|User)[ \t]*\d*[ \t]*:", re.I)

# Phrases by which a hinted rationale admits it was given the answer. Only hinted rationales are
# checked: a free one has no hint to leak, and "as given in the problem" is honest there.
LEAK_PATTERNS = (
    r"\bas (?:given|stated|told|mentioned|provided|indicated|instructed)\b[^.\n]{0,40}\banswer\b",
    r"\b(?:we|i) (?:are|were|am|was|have been|had been) (?:told|given|informed)\b[^.\n]{0,30}\banswer\b",
    r"\bthe answer (?:provided|given|stated|supplied|mentioned|indicated)\b",
    r"\b(?:given|provided|stated|supplied|expected|hinted) answer\b",
    r"\bthe answer is (?:already )?(?:given|provided|stated|told)\b",
    r"\b(?:you|the question|the problem|the prompt|it) (?:said|says|stated|states|told|tells|claims?)"
    r" (?:us |me )?(?:that )?the answer\b",
    r"\bwe (?:already )?know (?:that )?the answer is\b",
    r"\b(?:since|because) the (?:final )?answer is\b",
    r"\bthe hint\b",
    r"\bas if (?:i|you|we) had worked\b",
    r"\b(?:do not|don't) say that the answer was given\b",
    r"\breasoning that leads to this answer\b",
)
_LEAK_RE = re.compile("|".join(f"(?:{p})" for p in LEAK_PATTERNS), re.I)


def detect_leak(text: str) -> bool:
    """Whether a hinted rationale says, in any of our patterns, that it was told the answer."""
    return bool(_LEAK_RE.search(text))


def opens_with_answer(text: str, min_words: int = 5) -> bool:
    """Whether a rationale states an answer before reasoning and again at its end: fewer than `min_words`
    words come before its first answer statement, and that statement stays in the body once the final
    one is cut (`split_answer_line`). Answer forcing cannot check such a rationale: cut before its first
    statement (`reasoning_before_answer`) almost nothing is left to reason from, and cut at its last, the
    continuation copies the first. A gold-hinted one has mostly copied its hint."""
    body, line = split_answer_line(text)
    first = _ANSWER_STATEMENT_RE.search(body)
    return bool(line) and first is not None and len(body[: first.start()].split()) < min_words


def strip_stop(text: str, stop: tuple[str, ...]) -> str:
    """The completion without a stop string it ended on (generators keep it in the text)."""
    for s in stop:
        if s and text.endswith(s):
            return text[: -len(s)]
    return text


def split_answer_line(text: str) -> tuple[str, str]:
    """(body, answer statement) of a rationale. The statement is the line holding the LAST final-answer
    phrase; text after that line stays in the body (some models answer first and explain after).
    A rationale that never states an answer is all body: (text, "")."""
    text = text.replace("\r\n", "\n")
    cut = _NEW_QUESTION_RE.search(text)
    if cut and text[: cut.start()].strip():
        text = text[: cut.start()]
    matches = list(_ANSWER_STATEMENT_RE.finditer(text))
    if not matches:
        return text.strip(), ""
    start = matches[-1].start()
    end = text.find("\n", matches[-1].end())
    end = len(text) if end < 0 else end
    before = text[:start].rstrip(" \t,;:*#_")
    after = text[end:].strip()
    body = f"{before}\n{after}" if before.strip() and after else before or after
    return body.strip(), text[start:end].strip()


def reasoning_before_answer(text: str) -> str:
    """The rationale up to its FIRST answer statement: what answer forcing continues. Cutting only the final
    statement would leave an earlier one ("... 7 + 5 = 12 cats. The answer is 12. Here's the reasoning:
    ...") for the continuation to copy, so a hinted rationale that states its hint mid-way would pass
    whatever its reasoning says. A rationale that never states an answer is returned whole."""
    text = text.replace("\r\n", "\n")
    cut = _NEW_QUESTION_RE.search(text)
    if cut and text[: cut.start()].strip():
        text = text[: cut.start()]
    first = _ANSWER_STATEMENT_RE.search(text)
    return (text[: first.start()].rstrip(" \t,;:*#_") if first else text).strip()


def render_response(body: str, answer: str | None, answer_type: str) -> str:
    """A response in our training format: the body and one final-answer line (body only without an answer)."""
    if answer is None:
        return body
    line = format_answer_line(answer, answer_type)
    return f"{body} {line}" if body else line


def forcing_prompt(unhinted_prompt: str, body: str) -> str:
    """Question prompt (no hint) + rationale body + "The answer is": greedy continuation names the answer."""
    if not body:
        return unhinted_prompt + ANSWER_PREFIX
    sep = "" if unhinted_prompt[-1:].isspace() or body[:1].isspace() else " "
    return f"{unhinted_prompt}{sep}{body} {ANSWER_PREFIX}"


def forced_answer(continuation: str, answer_type: str, choices=()) -> str | None:
    """The answer a forcing continuation names (read with the one answer checker)."""
    return extract_answer(f"{ANSWER_PREFIX}{continuation}", answer_type, choices)
