"""The one record type every stage reads: a question with its gold answer."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

AnswerType = Literal["number", "choice", "yes_no", "text"]
ANSWER_TYPES: tuple[str, ...] = ("number", "choice", "yes_no", "text")
CHOICE_LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Example:
    """One question of a reasoning dataset.

    `gold` is normalised by answer type: a number in canonical decimal form ("43", "-2.5", "1000"),
    a choice letter ("C"), "yes"/"no", or the exact text. `choices` holds the option texts in letter
    order (A, B, ...) for choice questions and is empty otherwise.
    """

    id: str
    question: str
    gold: str
    answer_type: AnswerType
    choices: tuple[str, ...] = ()
    dataset: str = ""
    split: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def choice_letters(self) -> tuple[str, ...]:
        return tuple(CHOICE_LETTERS[: len(self.choices)])

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "question": self.question,
            "gold": self.gold,
            "answer_type": self.answer_type,
            "choices": list(self.choices),
            "dataset": self.dataset,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, row: dict) -> "Example":
        return cls(
            id=str(row["id"]),
            question=row["question"],
            gold=row["gold"],
            answer_type=row["answer_type"],
            choices=tuple(row.get("choices") or ()),
            dataset=row.get("dataset", ""),
            split=row.get("split", ""),
        )


# Answer type of each built-in dataset (keys as in the Reasoning Teachers splits).
BUILTIN_ANSWER_TYPES: dict[str, AnswerType] = {
    "single_eq": "number",
    "addsub": "number",
    "multiarith": "number",
    "gsm8k": "number",
    "aqua": "choice",
    "svamp": "number",
    "date_understanding": "choice",
    "tracking_shuffled_objects": "choice",
    "last_letter_concatenation": "text",
    "coin_flip": "yes_no",
    "commonsense_qa": "choice",
    "strategy_qa": "yes_no",
}


def canonical_number(value) -> str:
    """Canonical decimal text of a number: 43.0 -> "43", "1,000" -> "1000", "3/4" -> "0.75",
    "-0.50" -> "-0.5". Raises ValueError when `value` is not a number."""
    from fractions import Fraction

    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        number = Fraction(value).limit_denominator(10**9) if isinstance(value, float) else Fraction(value)
    else:
        text = str(value).strip().replace(",", "").replace("$", "").rstrip(".")
        if text.startswith("+"):
            text = text[1:]
        try:
            number = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number: {value!r}") from None
    if number.denominator == 1:
        return str(number.numerator)
    # Ten significant digits are plenty for these datasets and keep 1/3 comparable across sources.
    text = f"{float(number):.10g}"
    if "e" in text:
        text = f"{float(number):.10f}".rstrip("0").rstrip(".")
    return text
