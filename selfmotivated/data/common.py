"""Pieces shared by every loader: the error type, bad-row bookkeeping, gold and choice parsing."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..records import ANSWER_TYPES, CHOICE_LETTERS, canonical_number

log = logging.getLogger("selfmotivated.data")

ON_BAD_ROW = ("error", "skip")
MAX_LISTED_PROBLEMS = 20


class DataError(ValueError):
    """A dataset cannot be loaded as asked. `problems` lists "file:line: reason" strings, when row-level."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass
class LoadReport:
    """What a load did: rows read from the source, bad rows skipped (with reasons), examples returned."""

    source: str
    rows: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # "file:line: reason", one per skipped row
    loaded: int = 0
    notes: list[str] = field(default_factory=list)


class Examples(list):
    """A plain list of `Example`s that also carries the `LoadReport` of the load that made it."""

    def __init__(self, items=(), report: LoadReport | None = None):
        super().__init__(items)
        self.report = report if report is not None else LoadReport(source="")


def format_problems(problems: list[str], limit: int = MAX_LISTED_PROBLEMS) -> str:
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def settle_bad_rows(problems: list[str], on_bad_row: str, source: str, report: LoadReport) -> None:
    """Fail with one error listing every bad row, or (skip mode) record them in `report` and warn."""
    if not problems:
        return
    if on_bad_row == "error":
        raise DataError(
            f"{len(problems)} bad row(s) in {source}:\n{format_problems(problems)}\n"
            "Fix these rows, or skip them with on_bad_row='skip' (flag --on-bad-row skip).",
            problems,
        )
    report.skipped += len(problems)
    report.problems.extend(problems)
    log.warning("%s: skipped %d bad row(s); first: %s", source, len(problems), problems[0])


def check_answer_type(answer_type: str | None, source: str) -> str:
    if answer_type not in ANSWER_TYPES:
        given = "not set" if answer_type is None else f"{answer_type!r}"
        raise DataError(
            f"{source}: answer_type is {given}; it must be one of {', '.join(ANSWER_TYPES)} "
            "(flag --answer-type): number (a numeric answer), choice (a letter of the choices), "
            "yes_no (yes or no), text (an exact string)"
        )
    return answer_type


# "A) text", "A)text", "(A) text", "A. text": option text prefixed by its letter.
_LETTERED = re.compile(r"^\s*\(?([A-Z])[).]\s*(.*)$", re.S)
# A bare letter answer: "B", "(B)", "B)".
_LETTER = re.compile(r"^\(?([A-Za-z])\)?$")


def parse_choices(value) -> tuple[str, ...]:
    """Option texts in letter order from a list of texts, a list of "A) text" strings, a list of
    {"label", "text"} dicts, a dict {"label": [...], "text": [...]}, or a dict label -> text.
    Raises ValueError with the reason."""
    if isinstance(value, dict):
        if set(value) >= {"label", "text"} and isinstance(value["label"], list):
            if not isinstance(value["text"], list) or len(value["text"]) != len(value["label"]):
                raise ValueError("choices 'label' and 'text' must be lists of the same length")
            pairs = list(zip(value["label"], value["text"]))
        else:
            pairs = list(value.items())
        return _lettered_pairs([(str(k).strip(), v) for k, v in pairs])
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"choices must be a list or a dict, got {type(value).__name__}")
    if value and all(isinstance(v, dict) for v in value):
        if not all("label" in v and "text" in v for v in value):
            raise ValueError("choice dicts need 'label' and 'text' keys")
        return _lettered_pairs([(str(v["label"]).strip(), v["text"]) for v in value])
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError("choices must be texts")
    texts = [str(v).strip() for v in value]
    matches = [_LETTERED.match(t) for t in texts]
    # Only strip the letters when they run A, B, C... in order, so a text like "C) is fine" alone stays whole.
    if texts and all(m and m.group(1) == CHOICE_LETTERS[i] for i, m in enumerate(matches)):
        texts = [m.group(2).strip() for m in matches]
    return _check_choice_texts(texts)


def _lettered_pairs(pairs: list[tuple[str, object]]) -> tuple[str, ...]:
    labels = sorted(label.upper() for label, _ in pairs)
    if labels != list(CHOICE_LETTERS[: len(pairs)]):
        raise ValueError(
            f"choice labels must be A, B, C... without gaps, got {[label for label, _ in pairs]}"
        )
    by_label = {label.upper(): text for label, text in pairs}
    return _check_choice_texts([str(by_label[letter]).strip() for letter in labels])


def _check_choice_texts(texts: list[str]) -> tuple[str, ...]:
    if len(texts) < 2:
        raise ValueError(f"a choice question needs at least 2 choices, got {len(texts)}")
    if len(texts) > len(CHOICE_LETTERS):
        raise ValueError(f"at most {len(CHOICE_LETTERS)} choices are supported, got {len(texts)}")
    if any(not t for t in texts):
        raise ValueError("a choice text is empty")
    return tuple(texts)


def parse_gold(answer_type: str, value, choices: tuple[str, ...] = ()) -> str:
    """The normalised gold answer (see `Example.gold`), or ValueError with the reason."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("no gold answer")
    if answer_type == "number":
        if isinstance(value, str) and "####" in value:
            # GSM8K-style worked solution: the gold follows the last "####".
            value = value.rsplit("####", 1)[1]
        try:
            return canonical_number(value)
        except ValueError:
            raise ValueError(f"gold {value!r} is not a number") from None
    if answer_type == "yes_no":
        if isinstance(value, bool):
            return "yes" if value else "no"
        text = str(value).strip().rstrip(".").lower()
        if text in ("yes", "true"):
            return "yes"
        if text in ("no", "false"):
            return "no"
        raise ValueError(f"gold {value!r} is not yes or no")
    if answer_type == "choice":
        return _choice_gold(value, choices)
    if answer_type == "text":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"gold must be text, got {type(value).__name__}")
        return str(value).strip()
    raise ValueError(f"unknown answer_type {answer_type!r}")


def _choice_gold(value, choices: tuple[str, ...]) -> str:
    letters = CHOICE_LETTERS[: len(choices)]
    if not choices:
        raise ValueError("choice question without choices")
    if not isinstance(value, str) or isinstance(value, bool):
        raise ValueError(
            f"gold {value!r} must be a choice letter ({letters[0]}-{letters[-1]}) or a choice text"
        )
    text = value.strip()
    bare = _LETTER.match(text)
    if bare and bare.group(1).isupper():
        if bare.group(1) not in letters:
            raise ValueError(
                f"gold letter {bare.group(1)!r} is not among the choices {letters[0]}-{letters[-1]}"
            )
        return bare.group(1)
    if text in choices:
        return letters[choices.index(text)]
    folded = [
        i for i, c in enumerate(choices) if " ".join(c.split()).lower() == " ".join(text.split()).lower()
    ]
    if len(folded) == 1:
        return letters[folded[0]]
    if bare and bare.group(1).upper() in letters:
        return bare.group(1).upper()
    raise ValueError(
        f"gold {value!r} is neither a choice letter ({letters[0]}-{letters[-1]}) nor the text of one of the "
        f"choices {list(choices)}"
    )


# Evaluations of a dataset go in a folder named after it (RUN/eval/<model>/<folder>/); the transfer test set of
# a dataset in <folder><TRANSFER_SUFFIX>.
TRANSFER_SUFFIX = "@transfer"
_UNSAFE_IN_FOLDER = re.compile(r'[/\\:*?"<>|]' if os.name == "nt" else r"[/\\]")


def dataset_folder(dataset: str) -> str:
    """The one path component a dataset's results go under: its name where that is safe on this system
    (built-in names, `rg:task`; `:` only off Windows), else a readable part plus a digest of the whole name, so
    that a file path (`/data/my.jsonl`) or a hub id (`hf:owner/name`) never reaches outside the run folder."""
    suffix = ""
    if dataset.endswith(TRANSFER_SUFFIX):
        dataset, suffix = dataset[: -len(TRANSFER_SUFFIX)], TRANSFER_SUFFIX
    if dataset not in ("", ".", "..") and not _UNSAFE_IN_FOLDER.search(dataset):
        return dataset + suffix
    path = Path(dataset)
    readable = path.name if path.suffix.lower() in (".jsonl", ".json", ".csv") else dataset
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip("_.") or "dataset"
    return f"{readable}-{hashlib.sha256(dataset.encode()).hexdigest()[:8]}{suffix}"
