"""Datasets: the 12 Reasoning Teachers tasks, our synthetic tasks, and a user's own data, as `Example`s.

    from selfmotivated.data import DataConfig, load_examples
    test = load_examples(DataConfig(dataset="gsm8k", split="test", data_dir="/path/to/data"))
    train = load_examples(DataConfig(dataset="my_qa.jsonl", split="train", answer_type="number"))

`dataset` is a built-in key (see `list_datasets()`; needs the shared data folder: --data-dir or
$SML_DATA_DIR), a synthetic task (no files needed), a reasoning-gym task `rg:<task>` (generated, with the
task's own difficulty settings in `task_options`), a .jsonl/.json/.csv file, a `save_to_disk` folder,
or `hf:owner/name` for the Hugging Face Hub. `load_examples` returns a list that also carries
`.report` (a `LoadReport`: rows read, bad rows skipped and why).
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from ..records import ANSWER_TYPES, CHOICE_LETTERS, Example
from . import builtin, rg, synthetic
from .builtin import BUILTINS, DATA_DIR_ENV, load_builtin, resolve_data_dir
from .common import (ON_BAD_ROW, TRANSFER_SUFFIX, DataError, Examples, LoadReport, dataset_folder, parse_choices,
                     parse_gold)
from .synthetic import SYNTHETIC, gen_coin_flip, gen_last_letters
from .user import HUB_PREFIX, is_user_source, load_user, load_user_splits, seeded_split

__all__ = [
    "DataConfig",
    "DataError",
    "TRANSFER_SUFFIX",
    "dataset_folder",
    "LoadReport",
    "Examples",
    "load_examples",
    "load_dataset_split",
    "list_datasets",
    "describe_dataset",
    "format_description",
    "resolve_data_dir",
    "few_shot_prompt",
    "few_shot_exemplar_ids",
    "gen_coin_flip",
    "gen_last_letters",
    "seeded_split",
    "parse_gold",
    "parse_choices",
    "DATA_DIR_ENV",
]


@dataclass
class DataConfig:
    # what to load
    dataset: str = field(
        default="synthetic_coin_flip",
        metadata={
            "help": "a built-in dataset (gsm8k, strategy_qa, ...; see `sml data list`), a synthetic task "
            "(synthetic_coin_flip, synthetic_last_letters), a reasoning-gym task (rg:chain_sum, ...), a "
            ".jsonl/.json/.csv file, a datasets save_to_disk folder, or hf:owner/name for the Hugging Face Hub"
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder of the shared reasoning data (README.md, splits/, reasoning/); "
            f"default ${DATA_DIR_ENV}"
        },
    )
    split: str = field(
        default="test", metadata={"help": "which split: train or test (or a split name of your data)"}
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "keep only the first N examples of the split, in split order (deterministic)"},
    )
    on_bad_row: str = field(
        default="error",
        metadata={
            "help": "a row with no question, no gold or a gold that does not parse: 'error' fails listing "
            "every bad row, 'skip' leaves them out, counts them and warns",
            "choices": ON_BAD_ROW,
        },
    )
    # a user's own data
    answer_type: str | None = field(
        default=None,
        metadata={
            "help": "answer type of your own data (required there): number, choice, yes_no or text",
            "choices": ANSWER_TYPES,
        },
    )
    question_field: str = field(
        default="question",
        metadata={
            "help": "field/column holding the question (a dotted path reaches into nested objects: "
            "question.stem)"
        },
    )
    answer_field: str = field(
        default="answer",
        metadata={
            "help": "field/column holding the gold answer (for choice: a letter or the text of one choice)"
        },
    )
    choices_field: str | None = field(
        default=None,
        metadata={
            "help": "field/column holding the choices (choice data only): a list of texts, of 'A) text' "
            "strings, or a label -> text object; in CSV a JSON cell or texts separated by '|'"
        },
    )
    id_field: str | None = field(
        default=None, metadata={"help": "field/column holding a unique row id; default: <name>-<row number>"}
    )
    split_field: str = field(
        default="split",
        metadata={
            "help": "field/column naming each row's split; when absent, a seeded train/test split is made"
        },
    )
    test_fraction: float = field(
        default=0.3,
        metadata={"help": "share of rows put in test by the seeded split (data without a split field)"},
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the seeded train/test split"})
    hf_config: str | None = field(
        default=None,
        metadata={"help": "configuration name of a Hub dataset (hf:NAME), e.g. 'main' for openai/gsm8k"},
    )
    # generated tasks: synthetic_* and rg:<task>
    n_train: int = field(default=500, metadata={"help": "generated tasks: number of train questions"})
    n_test: int = field(default=150, metadata={"help": "generated tasks: number of test questions"})
    synthetic_seed: int = field(
        default=0,
        metadata={"help": "generated tasks: generator seed (each split draws from a stream of its own)"},
    )
    synthetic_size: int = field(
        default=4,
        metadata={"help": "synthetic tasks: people per coin-flip question, names per last-letters question"},
    )
    task_options: dict = field(
        default_factory=dict,
        metadata={
            "help": "generated tasks: the task's own settings, KEY=VALUE (repeatable; in YAML a mapping): "
            "reasoning-gym's config fields (rg:chain_sum: min_terms=2 max_terms=2 min_digits=1 max_digits=1; "
            "`sml data show rg:<task>` lists them), synthetic_coin_flip: people=N flips=K, "
            "synthetic_last_letters: words=N",
            "aliases": ("--task-option",),
        },
    )

    def __post_init__(self):
        if not self.dataset:
            raise DataError("dataset is empty: name a built-in dataset, a synthetic task or a data file")
        if self.on_bad_row not in ON_BAD_ROW:
            raise DataError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}, got {self.on_bad_row!r}")
        if self.answer_type is not None and self.answer_type not in ANSWER_TYPES:
            raise DataError(f"answer_type must be one of {', '.join(ANSWER_TYPES)}, got {self.answer_type!r}")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")
        if self.limit is not None and self.limit < 0:
            raise DataError(f"limit must be >= 0, got {self.limit}")
        if self.n_train < 0 or self.n_test < 0 or self.synthetic_size < 1:
            raise DataError(
                f"n_train and n_test must be >= 0 and synthetic_size >= 1, got {self.n_train}, "
                f"{self.n_test}, {self.synthetic_size}"
            )
        if not self.split:
            raise DataError("split is empty: use train or test")
        self.task_options = parse_task_options(self.task_options)


def parse_task_options(value) -> dict:
    """Task options as a dict from a mapping, "KEY=VALUE" strings (a list, or one string joined by commas),
    or None; values are read as YAML scalars ("2" -> 2, "true" -> True, "[1, 2]" -> [1, 2])."""
    from ..config import parse_key_values

    if value is None:
        return {}
    if not isinstance(value, dict):
        try:
            value = parse_key_values(value)
        except ValueError as err:
            raise DataError(f"task option {err}") from None
    options = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise DataError(f"task option names must be text, got {key!r}")
        options[key.strip()] = item
    return options


def _source_kind(name: str) -> str:
    if name in BUILTINS:
        return "builtin"
    if name in SYNTHETIC:
        return "synthetic"
    if rg.is_rg(name):
        return "rg"
    if is_user_source(name):
        return "user"
    raise DataError(
        f"unknown dataset {name!r}: not a built-in dataset ({', '.join(BUILTINS)}), not a synthetic task "
        f"({', '.join(SYNTHETIC)}), not a reasoning-gym task ({rg.PREFIX}<task>, e.g. rg:chain_sum), and no file "
        f"or folder of that name exists. A Hugging Face Hub dataset is named {HUB_PREFIX}owner/name."
    )


def _load_splits(config: DataConfig) -> tuple[dict[str, list[Example]], LoadReport, str]:
    """Every split of `config.dataset`, the load report and the source kind."""
    kind = _source_kind(config.dataset)
    _check_task_options(config, kind)
    if kind == "builtin":
        expected = BUILTINS[config.dataset].answer_type
        if config.answer_type not in (None, expected):
            raise DataError(
                f"{config.dataset} is a built-in {expected} dataset; answer_type "
                f"{config.answer_type!r} does not apply (leave it unset)"
            )
        splits, report = load_builtin(config.dataset, config.data_dir, config.on_bad_row)
    elif kind == "synthetic":
        try:
            splits = synthetic.generate(
                config.dataset, config.n_train, config.n_test, config.synthetic_seed, config.synthetic_size,
                config.task_options,
            )
        except ValueError as err:
            raise DataError(str(err)) from None
        report = LoadReport(
            source=f"{config.dataset} (generated, seed {config.synthetic_seed})",
            rows=config.n_train + config.n_test,
        )
    elif kind == "rg":
        splits = rg.generate(
            config.dataset, config.n_train, config.n_test, config.synthetic_seed, config.task_options,
            config.answer_type,
        )
        report = LoadReport(
            source=f"{config.dataset} (reasoning-gym, seed {config.synthetic_seed}, options {config.task_options})",
            rows=config.n_train + config.n_test,
        )
    else:
        splits, report = load_user_splits(config)
    return splits, report, kind


def check_task_options(config: DataConfig) -> None:
    """Fail now, naming the option, when config.task_options has a name (or, for our synthetic tasks, a value)
    the task does not take: without generating any question, so a config is checked before hours of work."""
    kind = _source_kind(config.dataset)
    _check_task_options(config, kind)
    if not config.task_options:
        return
    if kind == "rg":
        from .rg import task_name, task_option_defaults

        task = task_name(config.dataset)
        unknown = sorted(set(config.task_options) - set(task_option_defaults(task)))
        if unknown:
            raise DataError(f"{config.dataset}: unknown task option(s) {unknown}; allowed: "
                            f"{sorted(task_option_defaults(task))}")
    elif kind == "synthetic":
        from .synthetic import resolve_options

        try:
            resolve_options(config.dataset, config.synthetic_size, config.task_options)
        except ValueError as err:
            raise DataError(str(err)) from None


def _check_task_options(config: DataConfig, kind: str) -> None:
    if config.task_options and kind not in ("synthetic", "rg"):
        raise DataError(
            f"{config.dataset}: task_options ({config.task_options}) apply to generated tasks (synthetic_*, "
            "rg:<task>) only"
        )


def load_examples(config: DataConfig) -> list[Example]:
    """The examples of `config.split`, in split order, cut to `config.limit`. The returned list has a
    `.report` (`LoadReport`) with the rows read and any bad rows skipped."""
    if config.dataset in BUILTINS and config.split not in ("train", "test"):
        raise DataError(f"{config.dataset}: split must be train or test, got {config.split!r}")
    if _source_kind(config.dataset) == "user":
        _check_task_options(config, "user")
        examples = load_user(config)
        report = examples.report
    else:
        if config.split == "test" and _source_kind(config.dataset) in ("synthetic", "rg"):
            # A generated test split never depends on the train split: skip drawing train questions.
            config = dataclasses.replace(config, n_train=0)
        splits, report, _ = _load_splits(config)
        examples = splits.get(config.split)
        if examples is None:
            raise DataError(f"{config.dataset}: split must be train or test, got {config.split!r}")
    if config.limit is not None:
        examples = examples[: config.limit]
    report.loaded = len(examples)
    return Examples(examples, report)


def load_dataset_split(
    name: str, split: str = "test", data_dir: str | Path | None = None, limit: int | None = None, **kw
) -> list[Example]:
    """`load_examples(DataConfig(dataset=name, split=split, ...))`; `kw` are other DataConfig fields."""
    return load_examples(
        DataConfig(
            dataset=name, split=split, data_dir=None if data_dir is None else str(data_dir), limit=limit, **kw
        )
    )


def list_datasets() -> list[dict]:
    """The named datasets: built-in (need the shared data folder), synthetic and reasoning-gym (generated)."""
    rows = [
        {"key": b.key, "answer_type": b.answer_type, "description": b.description, "source": "builtin"}
        for b in BUILTINS.values()
    ]
    rows += [
        {"key": key, "answer_type": answer_type, "description": description, "source": "synthetic"}
        for key, (answer_type, description) in SYNTHETIC.items()
    ]
    return rows + rg.list_tasks()


def describe_dataset(name: str, data_dir: str | Path | None = None, n_examples: int = 3, **kw) -> dict:
    """Counts per split, answer type, the first `n_examples` of each split (as dicts) and notes.
    `kw` are DataConfig fields (answer_type, question_field, ... for a user's data)."""
    config = DataConfig(dataset=name, data_dir=None if data_dir is None else str(data_dir), **kw)
    splits, report, kind = _load_splits(config)
    if kind == "builtin":
        spec = BUILTINS[name]
        answer_type, description, notes = spec.answer_type, spec.description, list(spec.notes)
    elif kind == "synthetic":
        answer_type, description = SYNTHETIC[name]
        size, flips = synthetic.resolve_options(name, config.synthetic_size, config.task_options)
        notes = [
            f"Generated: n_train={config.n_train}, n_test={config.n_test}, seed={config.synthetic_seed}, "
            f"{size} names per question{'' if flips is None else f', flips drawn from {list(flips)}'}; no question is in "
            "both splits.",
            "Task options: " + "; ".join(f"{k}: {v}" for k, v in synthetic.TASK_OPTIONS[name].items()),
        ]
    elif kind == "rg":
        task = rg.task_name(name)
        answer_type = rg.answer_type_of(task, config.answer_type)
        description = rg.TASKS.get(task, (None, f"reasoning-gym task {task}"))[1]
        settings = {**rg.task_option_defaults(task), **config.task_options}
        notes = [
            f"Generated by reasoning-gym: n_train={config.n_train}, n_test={config.n_test}, "
            f"seed={config.synthetic_seed} (each split hashes its own seed); no question text is in both splits.",
            "Task options in effect (set with --task-option KEY=VALUE or data.task_options): "
            + ", ".join(f"{k}={v}" for k, v in settings.items()),
        ]
    else:
        answer_type, description, notes = config.answer_type, f"your data: {name}", []
    if report.skipped:
        notes.append(f"{report.skipped} bad row(s) skipped; first: {report.problems[0]}")
    order = [s for s in ("train", "test") if s in splits] + sorted(set(splits) - {"train", "test"})
    return {
        "name": name,
        "source": kind,
        "answer_type": answer_type,
        "description": description,
        "counts": {s: len(splits[s]) for s in order},
        "examples": {
            s: [{**ex.to_dict(), "meta": _plain_meta(ex.meta)} for ex in splits[s][:n_examples]]
            for s in order
        },
        "notes": notes,
        "rows": report.rows,
        "skipped": report.skipped,
    }


def _plain_meta(meta: dict) -> dict:
    # A human rationale stays out of what we show: it is exactly what this method claims not to need.
    return {k: v for k, v in meta.items() if k != "human_rationale"}


def format_description(desc: dict) -> str:
    """`describe_dataset`'s result as text for a person."""
    counts = ", ".join(f"{split} {n}" for split, n in desc["counts"].items())
    lines = [
        f"{desc['name']}  [{desc['source']}, {desc['answer_type']}]  {desc['description']}",
        f"examples: {counts}",
    ]
    if desc["notes"]:
        lines.append("notes:")
        lines += [
            textwrap.fill(note, 100, initial_indent="  - ", subsequent_indent="    ")
            for note in desc["notes"]
        ]
    for split, examples in desc["examples"].items():
        lines.append(f"{split} (first {len(examples)}):")
        for ex in examples:
            question = ex["question"] if len(ex["question"]) <= 300 else ex["question"][:297] + "..."
            lines.append(
                textwrap.fill(question, 100, initial_indent=f"  [{ex['id']}] ", subsequent_indent="    ")
            )
            if ex["choices"]:
                options = ", ".join(f"({CHOICE_LETTERS[i]}) {text}" for i, text in enumerate(ex["choices"]))
                lines.append(
                    textwrap.fill(options, 100, initial_indent="    choices: ", subsequent_indent="      ")
                )
            lines.append(f"    gold: {ex['gold']}")
    return "\n".join(lines)


def few_shot_prompt(key: str, data_dir: str | Path | None = None) -> str | None:
    """The few-shot chain-of-thought prompt of a dataset ("Q: ...\\nA: ... The answer is X." blocks): the
    shared Reasoning Teachers prompt for a built-in key, ours for a synthetic task, None otherwise."""
    if key in SYNTHETIC:
        return synthetic.synthetic_few_shot_prompt(key)
    return builtin.few_shot_prompt(key, data_dir)


def few_shot_exemplar_ids(key: str, data_dir: str | Path | None = None) -> list[str]:
    """Ids of dataset rows shown in `key`'s few-shot prompt (to leave out of evaluation). Synthetic
    prompts use questions of no split, so their list is empty."""
    return builtin.few_shot_exemplar_ids(key, data_dir)
