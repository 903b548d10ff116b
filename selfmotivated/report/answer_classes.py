"""Classes of answers a habit shows in, and how a model's answers spread over them.

On a task with few possible answers (yes/no, choice letters) each answer is its own class. On a numeric task
whose gold answers include negative numbers, the class is the sign: a model that never writes a minus sign
is right on none of the negative-gold questions, and one rewarded for a minus sign writes it everywhere.
Either way its accuracy mostly measures how often the habit matches the gold, not its reasoning, and
splitting it by the gold's class shows that at a glance. Other tasks (numbers of one sign, free text) have
no classes: None.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Callable, Iterable

NEGATIVE, NOT_NEGATIVE = "negative", "not negative"
_SPOKEN = {NEGATIVE: "a negative number", NOT_NEGATIVE: "zero or a positive number"}


def _number(value) -> Fraction | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Fraction(str(value).strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def sign_class(value) -> str | None:
    """NEGATIVE or NOT_NEGATIVE for a number, None for anything else (no answer, text)."""
    number = _number(value)
    return None if number is None else (NEGATIVE if number < 0 else NOT_NEGATIVE)


def _itself(value) -> str | None:
    return None if value is None else str(value)


def answer_classifier(golds: Iterable, max_labels: int = 10, min_share: float = 0.05) -> Callable | None:
    """The function that maps an answer to its class for a test set with these gold answers: the answer itself
    when there are 2..max_labels distinct golds; the sign when every gold is a number and between `min_share`
    and 1 - `min_share` of them are negative; else None (no classes to split by)."""
    golds = [str(g) for g in golds if g is not None]
    if 2 <= len(set(golds)) <= max_labels:
        return _itself
    numbers = [_number(g) for g in golds]
    if golds and all(n is not None for n in numbers):
        negative = sum(n < 0 for n in numbers) / len(numbers)
        if min_share <= negative <= 1 - min_share:
            return sign_class
    return None


def spoken(answer_class: str) -> str:
    """A class as a sentence names it: "a negative number" for a sign, the answer itself otherwise."""
    return _SPOKEN.get(answer_class, answer_class)


def same_answer(prediction, gold) -> bool:
    """The same text, or the same number written two ways ("44" and "44.0")."""
    if prediction is None or gold is None:
        return False
    if str(prediction) == str(gold):
        return True
    a, b = _number(prediction), _number(gold)
    return a is not None and a == b


def accuracy_by_class(pairs: list, classify: Callable = _itself) -> dict[str, tuple[int, int]]:
    """class of the gold -> (questions answered right, questions) from (prediction, gold) pairs."""
    out: dict[str, list[int]] = {}
    for prediction, gold in pairs:
        key = classify(gold)
        if key is not None:
            cell = out.setdefault(key, [0, 0])
            cell[0] += same_answer(prediction, gold)
            cell[1] += 1
    return {k: (right, n) for k, (right, n) in out.items()}


def class_shares(pairs: list, classify: Callable) -> tuple[dict[str, float], dict[str, float]]:
    """(share of the given answers in each class, share of the gold answers in each class); questions without
    an answer count in neither the answers' shares nor their denominator."""
    answered = Counter(c for p, _ in pairs if (c := classify(p)) is not None)
    golds = Counter(c for _, g in pairs if (c := classify(g)) is not None)
    n_answered, n_golds = sum(answered.values()), sum(golds.values())
    classes = sorted(set(answered) | set(golds))
    return ({c: answered[c] / n_answered for c in classes} if n_answered else {},
            {c: golds[c] / n_golds for c in classes} if n_golds else {})


def favourite_answer(pairs: list, max_labels: int = 10, min_answers: int = 20) -> tuple | None:
    """(class, times given, answers given, its share of the gold answers) when one class of answer dominates a
    model's (prediction, gold) pairs, else None. Classes: `answer_classifier` (the answer itself on tasks with few
    answers, the sign on numeric tasks with negative golds). Dominates: its share of the answers is more than
    halfway from its share of the gold answers to all."""
    classify = answer_classifier((g for _, g in pairs), max_labels)
    if classify is None:
        return None
    golds = Counter(c for _, g in pairs if (c := classify(g)) is not None)
    answered = Counter(c for p, _ in pairs if (c := classify(p)) is not None)
    n = sum(answered.values())
    if n < min_answers or not golds:
        return None
    top, count = answered.most_common(1)[0]
    gold_share = golds.get(top, 0) / sum(golds.values())
    if count / n <= (1 + gold_share) / 2:
        return None
    return top, count, n, gold_share
