"""Wrong answers to rationalise: the negatives of the rank.

A wrong answer should be one the model could plausibly argue for, so the reward model learns to tell
reasoning apart, not formats. Per answer type: another option (choice), the opposite (yes/no), the
model's own wrong free answers when it has any (the most natural negatives: it already believed them),
else a small perturbation of the gold (numbers: off by a little, doubled or halved, digits swapped;
text: one letter changed). The paper's reported variant, a random integer 0..100 for math, is the
`random_0_100` strategy. Every choice is seeded and never equal to the gold (checked with the one
answer checker, `answers.answers_match`).
"""

from __future__ import annotations

import hashlib
import random
import string
from collections import Counter
from fractions import Fraction
from typing import Iterable

from ..records import Example, canonical_number

WRONG_STRATEGIES = ("auto", "own", "synthetic", "random_0_100")


def stable_seed(*parts) -> int:
    """A 31-bit seed from any printable parts; stable across runs and Python versions (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_gold(candidate: str, example: Example) -> bool:
    from ..answers import answers_match

    return answers_match(candidate, example.gold, example.answer_type)


def own_wrong_answers(example: Example, free_answers: Iterable[str | None]) -> list[str]:
    """The model's wrong free answers, most frequent first (ties: first seen), valid for the question."""
    counts = Counter(a for a in free_answers if a)
    order = {a: i for i, a in reversed(list(enumerate(a for a in free_answers if a)))}
    out = []
    for answer in sorted(counts, key=lambda a: (-counts[a], order[a])):
        if example.answer_type == "choice" and answer not in example.choice_letters:
            continue
        if example.answer_type == "yes_no" and answer not in ("yes", "no"):
            continue
        if not _is_gold(answer, example):
            out.append(answer)
    return out


def _number_candidates(gold: str, rng: random.Random, allow_negative: bool = False) -> list[str]:
    """Wrong numbers near `gold`, round-robin over the kinds of slip; negative ones for a non-negative gold only
    when `allow_negative` (a task whose answers have both signs)."""
    value = Fraction(canonical_number(gold))
    near = [value + d for d in (1, -1, 2, -2, 10, -10)]
    scaled = [value * 2, value / 2]
    digits = canonical_number(gold).lstrip("-")
    swapped = []
    for i in range(len(digits) - 1):  # adjacent digit swaps ("43" -> "34"), a common slip
        a, b = digits[i], digits[i + 1]
        if a != b and a.isdigit() and b.isdigit():
            text = digits[:i] + b + a + digits[i + 2 :]
            if not (len(text) > 1 and text[0] == "0" and text[1] != "."):
                swapped.append(Fraction(("-" if value < 0 else "") + text))
    for group in (near, scaled, swapped):
        rng.shuffle(group)
    # Round-robin over the kinds so two targets are not both "gold plus a small offset".
    pool = [
        group[i]
        for i in range(max(map(len, (near, scaled, swapped))))
        for group in (near, scaled, swapped)
        if i < len(group)
    ]
    if value >= 0 and not allow_negative:  # a count or a price: a negative answer is not plausible
        pool = [x for x in pool if x >= 0]
    return [canonical_number(str(x)) for x in pool]


def _text_candidates(gold: str, rng: random.Random) -> list[str]:
    letters = [i for i, ch in enumerate(gold) if ch.isalpha()]
    if not letters:
        return [gold + rng.choice(string.ascii_lowercase)]
    rng.shuffle(letters)
    out = []
    for i in letters:
        ch = gold[i]
        # A different letter, not just the same one in another case (the checker may ignore case).
        options = [c for c in string.ascii_lowercase if c != ch.lower()]
        new = rng.choice(options)
        out.append(gold[:i] + (new.upper() if ch.isupper() else new) + gold[i + 1 :])
    return out


def synthetic_wrong_answers(example: Example, rng: random.Random, strategy: str = "auto") -> list[str]:
    """Wrong answers made from the question alone, in a seeded order."""
    kind = example.answer_type
    if kind == "choice":
        others = [letter for letter in example.choice_letters if letter != example.gold]
        rng.shuffle(others)
        return others
    if kind == "yes_no":
        return ["no" if example.gold == "yes" else "yes"]
    if kind == "number":
        if strategy == "random_0_100":
            pool = list(range(101))
            rng.shuffle(pool)
            return [str(x) for x in pool]
        return _number_candidates(example.gold, rng)
    return _text_candidates(example.gold, rng)


def choose_wrong_answers(
    example: Example, k: int, strategy: str = "auto", seed: int = 0, free_answers: Iterable[str | None] = ()
) -> list[str]:
    """Up to `k` distinct wrong answers for `example` (fewer when the question has fewer, e.g. yes/no).

    strategy: auto (own wrong free answers first, then synthetic ones), own (only the model's own),
    synthetic (never the model's own), random_0_100 (numbers: random integers 0..100, as the paper;
    other types as synthetic). Same inputs and seed -> same answers.
    """
    if strategy not in WRONG_STRATEGIES:
        raise ValueError(f"wrong_strategy must be one of {WRONG_STRATEGIES}, got {strategy!r}")
    if k < 0:
        raise ValueError(f"number of wrong answers must be >= 0, got {k}")
    rng = random.Random(stable_seed("wrong", seed, example.id))
    candidates: list[str] = []
    if strategy in ("auto", "own"):
        candidates += own_wrong_answers(example, list(free_answers))
    if strategy != "own":
        candidates += synthetic_wrong_answers(example, rng, strategy)
    out: list[str] = []
    for answer in candidates:
        if len(out) == k:
            break
        if answer not in out and not _is_gold(answer, example):
            out.append(answer)
    return out
