"""Procedural tasks from reasoning-gym (`rg:<task>`, e.g. `rg:chain_sum`), with the task's own difficulty knobs.

    DataConfig(dataset="rg:chain_sum", task_options={"min_terms": 2, "max_terms": 2, "max_digits": 1})

reasoning-gym (Apache-2.0, pinned in pyproject) generates each question from `random.Random(seed + index)`, so
two seeds a few apart give shifted copies of the same questions. Each split therefore gets a seed of its own,
hashed from (task, split, seed) far apart in a 2**31 range, and the same rules as our synthetic tasks
(synthetic.py): the test split is the first n_test distinct questions of its stream (it does not change with
n_train), and train is the first n_train distinct questions of its own stream whose text is not in test. A
small question space (1-digit x 1-digit products: 81 questions) runs out; the error says how many exist.

Answers are scored by our checker (answers.py), not the library's `score_answer`, whose default gives partial
credit when the gold merely appears inside a longer answer. Each task we list has the answer type its golds
fit (tests/test_rg.py checks our verdicts against the library's exact matches); any other reasoning-gym task
loads when you name its answer type (answer_type), at your own risk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

from ..records import ANSWER_TYPES, Example
from .common import DataError, parse_gold

PREFIX = "rg:"
# task -> (answer type, what it asks). Answer types follow the golds: integers -> number (compared as numbers:
# "+01,000" is 1000), one word -> text (compared exactly), Yes/No -> yes_no. Not listed: decimal_chain_sum,
# whose 4-decimal golds our number tolerance (1e-6 relative) cannot tell from answers wrong in the last place,
# and tasks whose golds are lists, fractions, times or sentences.
TASKS = {
    "chain_sum": ("number", "sums and differences of integers: 4 - 1 + 7 ="),
    "products": ("number", "products of integers: 12 * 7"),
    "basic_arithmetic": ("number", "+ - * / with parentheses and negatives: ( 56 + -33 ) - 84"),
    "leg_counting": ("number", "total legs of a list of animals: 3 cats, 2 spiders"),
    "gcd": ("number", "greatest common divisor of a few numbers"),
    "lcm": ("number", "least common multiple of a few numbers"),
    "count_bits": ("number", "how many 1 bits a number has in binary"),
    "letter_counting": ("number", "how often a letter appears in a short text"),
    "simple_equations": ("number", "solve a linear equation for x: 20*h + 65 = 1485"),
    "gsm_symbolic": ("number", "GSM8K-style word problems with fresh numbers"),
    "aiw": ("number", "Alice-in-Wonderland family and friends counting puzzles"),
    "family_relationships": ("text", "how two people of a described family are related, in one word"),
    "spell_backward": ("text", "spell a word backward"),
    "needle_haystack": ("text", "who, in a long list of statements, feels a given way about a thing"),
    "syllogism": ("yes_no", "does a conclusion follow from two premises (Yes/No)"),
}
log = logging.getLogger("selfmotivated.data")
_SEED_RANGE = 2**31 - 10**8  # split seeds are below this, so seed + index stays a positive 31-bit int


def is_rg(name: str) -> bool:
    return name.startswith(PREFIX)


def task_name(name: str) -> str:
    return name[len(PREFIX):] if is_rg(name) else name


def _library():
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError as err:  # the package, or one of the many it imports on import (named in `err`)
        raise DataError(
            f"rg: datasets need the reasoning-gym package, which could not be imported ({err}): pip install "
            "reasoning-gym==0.1.25 (it is among this project's dependencies; reinstall with `make install`)"
        ) from None
    return reasoning_gym, DATASETS


def task_option_defaults(task: str) -> dict:
    """The task's own settings (reasoning-gym's config dataclass) with their defaults, less seed and size."""
    _, registry = _library()
    if task not in registry:
        raise DataError(
            f"rg:{task}: reasoning-gym has no task {task!r}; the tasks we check answers of: {', '.join(TASKS)} "
            f"(all {len(registry)} of the library: `python -c 'import reasoning_gym.factory as f; "
            f"print(sorted(f.DATASETS))'`)"
        )
    config_cls = registry[task][1]
    defaults = {}
    for f in dataclasses.fields(config_cls):
        if f.name in ("seed", "size"):
            continue
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def answer_type_of(task: str, answer_type: str | None = None) -> str:
    listed = TASKS.get(task, (None,))[0]
    if answer_type is not None:
        if answer_type not in ANSWER_TYPES:
            raise DataError(f"answer_type must be one of {', '.join(ANSWER_TYPES)}, got {answer_type!r}")
        if listed is not None and answer_type != listed:
            raise DataError(
                f"rg:{task} is a {listed} task; answer_type {answer_type!r} does not apply (leave it unset)"
            )
        return answer_type
    if listed is None:
        raise DataError(
            f"rg:{task}: not one of the tasks whose answers we have checked ({', '.join(TASKS)}); name its "
            "answer type (answer_type: number, yes_no or text) to use it anyway, after checking with "
            "`sml data show` that its golds are one number, Yes/No or one word"
        )
    return listed


def split_seed(task: str, split: str, seed: int) -> int:
    """A seed of its own per split, far from the other split's: reasoning-gym seeds question i with seed + i."""
    digest = hashlib.sha256(f"rg:{task}-{split}-{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_RANGE


def _make(task: str, options: dict, seed: int, size: int):
    reasoning_gym, _ = _library()
    defaults = task_option_defaults(task)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DataError(f"rg:{task}: unknown task option(s) {unknown}; allowed: {sorted(defaults)}")
    try:
        return reasoning_gym.create_dataset(task, seed=seed, size=size, **options)
    except (AssertionError, TypeError, ValueError) as err:
        # The library validates its config with bare asserts: say which settings it refused.
        raise DataError(f"rg:{task}: reasoning-gym refused task options {options}: {err or 'invalid'}") from None


def _stream(task: str, split: str, seed: int, options: dict, count: int, skip: set[str]) -> list[dict]:
    """The first `count` distinct questions of one split's stream, leaving out those in `skip`."""
    if count == 0:
        return []
    attempts = 20 * count + 200  # a small space is exhausted long before this many draws
    dataset = _make(task, options, split_seed(task, split, seed), attempts)
    items, seen = [], set(skip)
    for index in range(attempts):
        entry = dataset[index]
        if entry["question"] in seen:
            continue
        seen.add(entry["question"])
        items.append({**entry, "index": index})
        if len(items) == count:
            repeats = index + 1 - count
            if repeats > 0.1 * count:
                # Distinct questions from a small space: its small parts (the 200 one-digit sums of "1-2 digits")
                # run out first, so this split holds fewer of them than the setting draws.
                log.warning("rg:%s %s: %d of %d draws repeated a question already taken; with options %s the "
                            "question space is small, so this split under-represents its smallest parts (check the "
                            "mix with `sml data show`)", task, split, repeats, index + 1, options)
            return items
    raise DataError(
        f"rg:{task}: only {len(items)} distinct {split} questions (after leaving out {len(skip)} of other "
        f"splits) in {attempts} draws with task options {options}, {count} asked; this setting has too few "
        "different questions: ask for fewer (n_train, n_test) or make it harder"
    )


def _examples(task: str, split: str, items: list[dict], answer_type: str, seed: int) -> list[Example]:
    examples, problems = [], []
    for i, entry in enumerate(items):
        try:
            gold = parse_gold(answer_type, entry["answer"])
        except ValueError as err:
            problems.append(f"{split} question {i}: {err}")
            continue
        examples.append(Example(
            id=f"rg:{task}-{split}-{i}", question=entry["question"].strip(), gold=gold, answer_type=answer_type,
            dataset=f"rg:{task}", split=split,
            meta={"source": "reasoning-gym", "rg_task": task, "rg_seed": split_seed(task, split, seed),
                  "rg_index": entry["index"], "rg_answer": entry["answer"],
                  "rg_metadata": _plain(entry.get("metadata") or {})},
        ))
    if problems:
        raise DataError(
            f"rg:{task}: {len(problems)} gold(s) are not {answer_type} answers (first: {problems[0]}); this task "
            "needs another answer type", problems)
    return examples


def _plain(value):
    """Metadata as JSON-friendly values (the library keeps tuples and sometimes sets)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def generate(name: str, n_train: int = 500, n_test: int = 150, seed: int = 0, options: dict | None = None,
             answer_type: str | None = None) -> dict[str, list[Example]]:
    """{"train": [...], "test": [...]} of reasoning-gym task `name` (rg:<task>); no question text is in both."""
    task = task_name(name)
    answer_type = answer_type_of(task, answer_type)
    options = dict(options or {})
    test = _stream(task, "test", seed, options, n_test, set())
    train = _stream(task, "train", seed, options, n_train, {e["question"] for e in test})
    return {"train": _examples(task, "train", train, answer_type, seed),
            "test": _examples(task, "test", test, answer_type, seed)}


def list_tasks() -> list[dict]:
    """Rows for `sml data list`: the tasks whose answers we have checked."""
    return [{"key": PREFIX + task, "answer_type": answer_type, "description": f"reasoning-gym: {description}",
             "source": "rg"} for task, (answer_type, description) in TASKS.items()]


def library_score(answer: str, example: Example, options: dict | None = None) -> float:
    """reasoning-gym's own `score_answer` of a bare answer to one of our examples (for cross-checks)."""
    dataset = _make(example.meta["rg_task"], dict(options or {}), 0, 1)
    entry = {"question": example.question, "answer": example.meta["rg_answer"],
             "metadata": example.meta.get("rg_metadata", {})}
    return dataset.score_answer(answer, entry)
