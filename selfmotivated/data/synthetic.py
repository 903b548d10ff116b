"""Our own generators for the two synthetic tasks, so a fresh machine can run without any data files.

They ask the same questions, with the same answer types, as Kojima et al.'s Coin Flip and Last Letter
Concatenation, but draw names from our own list (resources/synthetic_first_names.txt).

Determinism: each split comes from its own stream, `random.Random("<task>-<split>-<seed>")` (string
seeds are hashed with SHA-512, stable across Python versions and platforms). The test split is the
first n_test distinct questions of the test stream, so it does not change with n_train; train skips any
question already in test. A fixed "prompt" stream makes the few-shot exemplars, which both splits skip.

Difficulty knobs (`task_options`, see TASK_OPTIONS): Coin Flip's `people` (how many people are named) and
`flips` (how many of them flip the coin instead of a fair coin per person: a count, or a list of counts each
question draws one of; the parity of the flips is the whole task, so fewer flips is easier, and a list of an odd
and an even count keeps both answers common, where one count gives every question the same gold); Last
Letters' `words` (how many names to join). Left unset, every question draws exactly what it drew before these
knobs existed.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources

from ..records import Example

SYNTHETIC = {
    "synthetic_coin_flip": (
        "yes_no",
        "Coin Flip (ours, generated): is the coin still heads up after N people each flip it or not?",
    ),
    "synthetic_last_letters": (
        "text",
        "Last Letter Concatenation (ours, generated): join the last letters of N first names",
    ),
}
N_PROMPT_EXEMPLARS = 4
# task -> option -> what it sets. `people`/`words` default to DataConfig.synthetic_size (4).
TASK_OPTIONS = {
    "synthetic_coin_flip": {
        "people": "people named in each question (default: synthetic_size, 4)",
        "flips": "how many of them flip the coin, or a list of counts to draw from per question (default: each "
        "flips with probability 1/2)",
    },
    "synthetic_last_letters": {"words": "names to join per question (default: synthetic_size, 4)"},
}


@lru_cache(maxsize=1)
def first_names() -> tuple[str, ...]:
    """Our list of first names (one word each, ASCII letters)."""
    text = resources.files("selfmotivated.resources").joinpath("synthetic_first_names.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _coin_flip_item(
    rng: random.Random, n_people: int, names: tuple[str, ...], n_flips: tuple[int, ...] | None = None
) -> tuple[str, str, dict]:
    people = rng.sample(names, n_people)
    if n_flips is None:
        flips = [rng.random() < 0.5 for _ in people]
    else:  # a count of flips drawn from n_flips, at random places
        count = n_flips[0] if len(n_flips) == 1 else rng.choice(n_flips)
        flippers = set(rng.sample(range(n_people), count))
        flips = [i in flippers for i in range(n_people)]
    steps = " ".join(
        f"{p} flips the coin." if f else f"{p} does not flip the coin." for p, f in zip(people, flips)
    )
    question = (
        f'A coin is heads up. {steps} Is the coin still heads up? Note that "flip" here means "reverse".'
    )
    # Heads up again exactly when the number of flips is even.
    gold = "yes" if sum(flips) % 2 == 0 else "no"
    return question, gold, {"people": people, "flips": flips}


def _last_letters_item(rng: random.Random, n_names: int, names: tuple[str, ...]) -> tuple[str, str, dict]:
    picked = rng.sample(names, n_names)
    question = f'Take the last letters of each words in "{" ".join(picked)}" and concatenate them.'
    return question, "".join(name[-1] for name in picked), {"names": picked}


def _stream(
    task: str, stream: str, seed: int, size: int, count: int, skip: set[str], flips: tuple[int, ...] | None = None
) -> list[tuple[str, str, dict]]:
    """The first `count` distinct questions of one seeded stream, leaving out those in `skip`."""
    names = first_names()
    if not 1 <= size <= len(names):
        raise ValueError(f"{task}: the number of names per question must be 1..{len(names)}, got {size}")
    rng = random.Random(f"{task}-{stream}-{seed}")
    items, seen = [], set(skip)
    attempts, max_attempts = 0, 50 * count + 1000
    while len(items) < count:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"{task}: could not draw {count} distinct questions with {size} name(s) each; "
                "ask for fewer examples or more names per question"
            )
        if task == "synthetic_coin_flip":
            item = _coin_flip_item(rng, size, names, flips)
        else:
            item = _last_letters_item(rng, size, names)
        if item[0] not in seen:
            seen.add(item[0])
            items.append(item)
    return items


def _examples(task: str, split: str, items: list[tuple[str, str, dict]]) -> list[Example]:
    answer_type = SYNTHETIC[task][0]
    return [
        Example(
            id=f"{task}-{split}-{i}",
            question=q,
            gold=gold,
            answer_type=answer_type,
            dataset=task,
            split=split,
            meta={**meta, "source": "generated"},
        )
        for i, (q, gold, meta) in enumerate(items)
    ]


def resolve_options(task: str, size: int = 4, options: dict | None = None) -> tuple[int, tuple[int, ...] | None]:
    """(names per question, the counts of flips a question draws from or None) of `task` from synthetic_size and
    its task options; ValueError naming the option when one is unknown or out of range."""
    options = dict(options or {})
    allowed = TASK_OPTIONS[task]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{task}: unknown task option(s) {unknown}; allowed: {sorted(allowed)}")
    size_key = "people" if task == "synthetic_coin_flip" else "words"
    def whole(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{task}: task option {key!r} must be a whole number, got {value!r}")
        return value

    size = whole(size_key, options[size_key]) if size_key in options else size
    if size < 1:
        raise ValueError(f"{task}: task option {size_key!r} must be >= 1, got {size}")
    flips = options.get("flips")
    if flips is not None:
        flips = tuple(whole("flips", v) for v in flips) if isinstance(flips, (list, tuple)) else (
            whole("flips", flips),)
        if not flips or not all(0 <= f <= size for f in flips):
            raise ValueError(f"{task}: task option 'flips' must be between 0 and people ({size}), got "
                             f"{options['flips']}")
    return size, flips


def generate(
    task: str, n_train: int = 500, n_test: int = 150, seed: int = 0, size: int = 4, options: dict | None = None
) -> dict[str, list[Example]]:
    """{"train": [...], "test": [...]} of `task`; no question is in both, or in the few-shot prompt.
    `options` are the task's difficulty knobs (TASK_OPTIONS); they override `size`."""
    if task not in SYNTHETIC:
        raise ValueError(f"unknown synthetic task {task!r}; known: {', '.join(SYNTHETIC)}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"{task}: n_train and n_test must be >= 0, got {n_train} and {n_test}")
    size, flips = resolve_options(task, size, options)
    # The exemplars our few-shot prompt shows (4 names, random flips) and those of this size stay out.
    prompt = {q for q, _, _ in _prompt_items(task, size)} | {q for q, _, _ in _prompt_items(task)}
    test = _stream(task, "test", seed, size, n_test, prompt, flips)
    train = _stream(task, "train", seed, size, n_train, prompt | {q for q, _, _ in test}, flips)
    return {"train": _examples(task, "train", train), "test": _examples(task, "test", test)}


def gen_coin_flip(
    n_train: int = 500, n_test: int = 150, seed: int = 0, n_people: int = 4, n_flips: int | list | None = None
) -> dict[str, list[Example]]:
    """Coin Flip questions: n_people each flip the coin or not (exactly n_flips of them, when given); gold
    "yes" when it is still heads up."""
    options = {} if n_flips is None else {"flips": n_flips}  # a count, or a list of counts
    return generate("synthetic_coin_flip", n_train, n_test, seed, n_people, options)


def gen_last_letters(
    n_train: int = 500, n_test: int = 150, seed: int = 0, n_names: int = 4
) -> dict[str, list[Example]]:
    """Last Letter Concatenation questions over n_names first names; gold is the exact concatenation."""
    return generate("synthetic_last_letters", n_train, n_test, seed, n_names)


def _prompt_items(task: str, size: int = 4) -> list[tuple[str, str, dict]]:
    return _stream(task, "prompt", 0, size, N_PROMPT_EXEMPLARS, set())


def synthetic_few_shot_prompt(task: str, size: int = 4) -> str:
    """A few-shot chain-of-thought prompt ("Q: ...\\nA: ... The answer is X." blocks) from our own fixed
    exemplars, which never occur in any split."""
    blocks = []
    for question, gold, meta in _prompt_items(task, size):
        if task == "synthetic_coin_flip":
            flipped = [p for p, f in zip(meta["people"], meta["flips"]) if f]
            count = len(flipped)
            who = " and ".join([", ".join(flipped[:-1]), flipped[-1]] if count > 1 else flipped) or "nobody"
            parity, end = ("an even", "heads") if count % 2 == 0 else ("an odd", "tails")
            answer = (
                f"The coin was flipped by {who}. So it was flipped {count} time{'s' * (count != 1)}, "
                f"{parity} number. It started heads up, so it ends {end} up. The answer is {gold}."
            )
        else:
            steps = " ".join(f'The last letter of "{n}" is "{n[-1]}".' for n in meta["names"])
            answer = f'{steps} Joined together they give "{gold}". The answer is {gold}.'
        blocks.append(f"Q: {question}\nA: {answer}")
    return "\n".join(blocks)
