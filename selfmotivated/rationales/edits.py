"""Answer-edited negatives: a right rationale with its answer changed to a wrong one, ranked below the original.

Why: a reward model learns whatever separates its chosen texts from its rejected ones. On chain_sum the rank's
753 pairs held 99 where the chosen text stated a negative number and the rejected one did not, and 3 the other
way round: the base model never writes a minus sign, so every negative answer it saw was a gold-hinted, right
one. The reward model learned "a minus sign is right", and PPO, twice, taught the policy to answer every
question with a negative number (results/ladder/README.md). An edited copy states a wrong answer in the same
words as a right one: the pair is separated by the answer alone, so the only way to rank it is to check the
answer against the question.

How: every occurrence of the stated answer in a right response (the top tier, whose answer the checker
confirmed) becomes the wrong answer, so the text stays consistent with itself ("18 + 26 = 44. The answer
is 44." -> "18 + 26 = -44. The answer is -44."): the edit cannot be caught by comparing the answer line
with the body. Wrong answers are the rank's synthetic ones for numbers (off by a little, doubled or halved,
digits swapped: `wrong._number_candidates`) and, when the golds of the set have both signs, the negated
answer first: an edit that crosses to the other sign, the class the habit lives in. Numbers only; a text
whose answer does not appear as a number in it is left alone. A number in the question that equals the
answer is edited too where the text repeats it ("44 + 0 = 44" -> "45 + 0 = 45"): still a wrong text.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from ..answers import extract_answer
from ..records import canonical_number
from .wrong import _number_candidates, stable_seed

EDITED_KIND = "edited"


def _number_pattern(answer: str) -> re.Pattern:
    """The answer as a standalone number: not part of a longer number, and a positive one not after a minus."""
    sign_guard = "" if answer.startswith("-") else r"(?<!-)"
    return re.compile(rf"(?<![\d.,]){sign_guard}{re.escape(answer)}(?![\d]|[.,]\d)")


def edit_answer(text: str, answer: str, wrong: str) -> str | None:
    """`text` with every standalone occurrence of the number `answer` replaced by `wrong`; None when it has none."""
    edited, count = _number_pattern(answer).subn(wrong, text)
    return edited if count else None


def negated(number: str) -> str:
    """The canonical number with its sign flipped ("7" -> "-7", "-7" -> "7")."""
    return number[1:] if number.startswith("-") else "-" + number


def both_signs(numbers) -> bool:
    """Whether canonical numbers include negative and non-negative ones (a task whose answers have both signs)."""
    numbers = list(numbers)
    return any(n.startswith("-") for n in numbers) and any(not n.startswith("-") for n in numbers)


def wrong_numbers(answer: str, k: int, signed: bool, seed) -> list[str]:
    """Up to k wrong answers for a numeric answer: its negation first when `signed` (the set's golds have both
    signs) and the answer is not 0, then the synthetic candidates the rank uses, in a seeded order."""
    rng = random.Random(stable_seed("edit", seed))
    value = canonical_number(answer)
    pool = [negated(value)] if signed and value != "0" else []
    pool += _number_candidates(value, rng, allow_negative=signed)
    out: list[str] = []
    for candidate in pool:
        if candidate != value and candidate not in out:
            out.append(candidate)
        if len(out) == k:
            break
    return out


def _stated_number(text: str) -> str | None:
    answer = extract_answer(text, "number")
    try:
        return None if answer is None else canonical_number(answer)
    except ValueError:
        return None


def answer_edit_pairs(rows: Sequence[dict], per_response: int, seed: int = 0) -> list[dict]:
    """Pairs (right response > the same response with its answer edited, pair type right>edited), up to
    `per_response` for each distinct right response among `rows`' chosen texts: those at the highest tier of
    their question that state a number (the checker called them right). Tiers: the original's, and 1."""
    if per_response <= 0:
        return []
    top: dict[str, int] = {}
    for r in rows:
        qid = str(r["question_id"])
        top[qid] = max(top.get(qid, 0), int(r["chosen_tier"]))
    right: dict[tuple[str, str], dict] = {}  # (question, text) -> its first pair row, for prompt and kind
    for r in rows:
        if int(r["chosen_tier"]) == top[str(r["question_id"])]:
            right.setdefault((str(r["question_id"]), r["chosen"].strip()), r)
    stated = {key: _stated_number(key[1]) for key in right}
    golds = {stated[key] for key in right if stated[key] is not None}
    signed = both_signs(golds)
    pairs = []
    for (qid, text), row in right.items():
        answer = stated[(qid, text)]
        if answer is None:
            continue
        for wrong in wrong_numbers(answer, per_response, signed, (seed, qid, text)):
            edited = edit_answer(row["chosen"], answer, wrong)
            if edited is None or _stated_number(edited) != wrong:
                continue  # the answer is written another way ("1,000"), or the edit did not reach the answer line
            pairs.append({"question_id": row["question_id"], "prompt": row["prompt"], "chosen": row["chosen"],
                          "rejected": edited, "chosen_tier": row["chosen_tier"], "rejected_tier": 1,
                          "chosen_kind": row.get("chosen_kind", "?"), "rejected_kind": EDITED_KIND,
                          "chosen_finished": row.get("chosen_finished", True),
                          "rejected_finished": row.get("chosen_finished", True),
                          "pair_type": "right>edited", "_where": f"an edit of a right response (question {qid})"})
    return pairs
