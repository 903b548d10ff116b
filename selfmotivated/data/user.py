"""A user's own data: JSON Lines, CSV, a `datasets` folder (`save_to_disk`) or a Hub dataset (`hf:NAME`).

Every row becomes an `Example` with the declared answer type. Bad rows (no question, no gold, a gold
that does not parse, malformed JSON, a short CSV row, a duplicate id) fail the load with one error that
lists them as `file:line: reason`, or with on_bad_row="skip" are skipped, counted and warned about.
Field names may be dotted paths into nested objects ("question.stem").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..records import Example
from .common import (
    DataError,
    Examples,
    LoadReport,
    check_answer_type,
    parse_choices,
    parse_gold,
    settle_bad_rows,
)

if TYPE_CHECKING:
    from . import DataConfig

HUB_PREFIX = "hf:"
_MISSING = object()


def is_user_source(name: str) -> bool:
    """Whether `name` points at user data: a Hub name with the hf: prefix, or an existing file or folder."""
    return name.startswith(HUB_PREFIX) or Path(name).expanduser().exists()


def load_user(config: DataConfig) -> Examples:
    """The examples of `config.split` from the user's data named by `config.dataset`."""
    splits, report = load_user_splits(config)
    if config.split not in splits:
        raise DataError(
            f"{config.dataset}: no examples in split {config.split!r}; the splits found are "
            f"{sorted(splits)} (flag --split; --split-field names the column that holds the split)"
        )
    examples = splits[config.split]
    report.loaded = len(examples)
    return Examples(examples, report)


def load_user_splits(config: DataConfig) -> tuple[dict[str, list[Example]], LoadReport]:
    """Every split of the user's data ({split name: examples in row order}) and the load report. Bad rows
    anywhere in the source count, whichever split is asked for."""
    source = config.dataset
    check_answer_type(config.answer_type, source)
    if config.answer_type == "choice" and not config.choices_field:
        raise DataError(
            f"{source}: answer_type 'choice' needs choices_field (flag --choices-field), the field "
            "holding the option texts"
        )
    if source.startswith(HUB_PREFIX):
        parts = _load_hf(config, source[len(HUB_PREFIX) :], hub=True)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            parts = _load_hf(config, str(path), hub=False)
        elif not path.is_file():
            raise DataError(f"data file not found: {source}")
        elif path.suffix.lower() == ".csv":
            parts = [(*_read_csv(path, config), path.stem, None, path.stem)]
        elif path.suffix.lower() in (".jsonl", ".json"):
            parts = [(*_read_json_rows(path, config), path.stem, None, path.stem)]
            _check_fields_exist(parts[0][0], config, source)
        else:
            raise DataError(
                f"{source}: unsupported file type {path.suffix!r}; use .jsonl, .json, .csv, or a "
                "folder written by datasets' save_to_disk"
            )
    report = LoadReport(source=source)
    splits, problems = {}, []
    for rows, has_split, name, fixed_split, id_prefix in parts:
        examples, bad = _build(rows, config, name, source, has_split, fixed_split, id_prefix)
        report.rows += len(rows)
        problems += bad
        for ex in examples:
            splits.setdefault(ex.split, []).append(ex)
    settle_bad_rows(problems, config.on_bad_row, source, report)
    report.loaded = sum(len(v) for v in splits.values())
    return splits, report


def _get(record: dict, name: str):
    """record[name], or a dotted path into nested dicts ("question.stem"); _MISSING when absent."""
    if name in record:
        return record[name]
    value = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _field_names(record: dict) -> list[str]:
    """A record's fields, nested ones as dotted paths one level down ("question.stem")."""
    names = []
    for key, value in record.items():
        names.append(key)
        if isinstance(value, dict):
            names += [f"{key}.{sub}" for sub in value]
    return names


def _check_fields_exist(rows: list[tuple], config: DataConfig, source: str) -> None:
    """A field named in the config that no row has is a wrong name, not a set of bad rows: say so once and
    list the fields the rows do have (CSV headers and dataset columns are checked where they are read)."""
    records = [record for record, _, _ in rows if record is not None]
    if not records:
        return
    for flag, name in (("--question-field", config.question_field), ("--answer-field", config.answer_field),
                       ("--choices-field", config.choices_field), ("--id-field", config.id_field)):
        if name and all(_get(record, name) is _MISSING for record in records):
            fields = list(dict.fromkeys(f for record in records[:1000] for f in _field_names(record)))
            raise DataError(f"{source}: no row has the field {name!r} ({flag}); the rows have the fields: "
                            f"{', '.join(fields)}")


def _read_json_rows(path: Path, config: DataConfig) -> tuple[list[tuple], bool]:
    """(record or None, where, error) per row. JSON Lines, or a .json file holding one array (or an object
    with an "examples" array), whose rows are named by position since they have no line of their own."""
    text = path.read_text(encoding="utf-8")
    rows = []
    if path.suffix.lower() == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON Lines with a .json name (like AQuA's files): read it line by line below
        if isinstance(data, dict) and isinstance(data.get("examples"), list):
            data = data["examples"]
        if isinstance(data, list):
            for r, record in enumerate(data):
                ok = isinstance(record, dict)
                rows.append(
                    (record if ok else None, f"{path}[row {r}]", None if ok else "row is not a JSON object")
                )
            return rows, any(r[0] is not None and config.split_field in r[0] for r in rows)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, a separator) are not rows
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append((None, where, f"malformed JSON ({err.msg} at column {err.colno})"))
            continue
        if not isinstance(record, dict):
            rows.append((None, where, f"row is a JSON {type(record).__name__}, not an object"))
            continue
        rows.append((record, where, None))
    return rows, any(r[0] is not None and config.split_field in r[0] for r in rows)


def _required_fields(config: DataConfig) -> list[str]:
    fields = [config.question_field, config.answer_field]
    fields += [f for f in (config.choices_field, config.id_field) if f]
    return fields


def _read_csv(path: Path, config: DataConfig) -> tuple[list[tuple], bool]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [f for f in _required_fields(config) if f not in header]
        if missing:
            # Not a row problem: every row lacks it, so there is nothing to skip.
            raise DataError(
                f"{path}:1: missing required column(s) {missing}; the header has {header}. "
                "Name the columns with --question-field/--answer-field/--choices-field/--id-field."
            )
        rows, end = [], 1
        for record in reader:
            start, end = end + 1, reader.line_num  # a quoted cell may span lines: name the row's first line
            where = f"{path}:{start}"
            if None in record:
                rows.append(
                    (
                        None,
                        where,
                        f"row has {len(header) + len(record[None])} cells, the header has {len(header)}",
                    )
                )
            elif any(v is None for v in record.values()):
                n_cells = sum(v is not None for v in record.values())
                rows.append((None, where, f"row has {n_cells} cells, the header has {len(header)}"))
            else:
                rows.append((record, where, None))
    return rows, config.split_field in header


def _csv_choices(value):
    """A CSV cell holds choices as JSON (a list or an object) or as texts separated by '|'."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"choices cell is not valid JSON ({err.msg})") from None
    return text.split("|") if text else []


def _load_hf(config: DataConfig, name: str, hub: bool) -> list[tuple]:
    """One (rows, has_split, name, fixed_split, id_prefix) part per table: each split of a DatasetDict,
    or the one Dataset."""
    import datasets  # heavy: imported only when a Hugging Face dataset is asked for

    try:
        data = datasets.load_dataset(name, config.hf_config) if hub else datasets.load_from_disk(name)
    except FileNotFoundError as err:
        if hub:
            raise DataError(f"hf:{name}: could not load it from the Hugging Face Hub ({err})") from None
        raise DataError(f"{name}: not a dataset folder written by save_to_disk ({err})") from None
    except Exception as err:  # network, auth and config errors of the Hub come in many types
        if not hub:
            raise
        raise DataError(
            f"hf:{name}: could not load it from the Hugging Face Hub ({type(err).__name__}: {err})"
        ) from None
    label = name.rstrip("/").replace("/", "_") if hub else Path(name).name
    tables = dict(data) if isinstance(data, datasets.DatasetDict) else {None: data}
    parts = []
    for split, table in tables.items():
        where = name if split is None else f"{name}[{split}]"
        missing = [f for f in _required_fields(config) if f.split(".")[0] not in table.column_names]
        if missing:
            raise DataError(
                f"{where}: missing required column(s) {missing}; the columns are {table.column_names}"
            )
        rows = [(record, f"{where}[row {r}]", None) for r, record in enumerate(table.to_list())]
        has_split = split is None and config.split_field in table.column_names
        # Rows are numbered per split of a DatasetDict, so the split goes into the id to keep ids unique.
        parts.append((rows, has_split, label, split, label if split is None else f"{label}-{split}"))
    return parts


def seeded_split(n: int, test_fraction: float, seed: int) -> list[str]:
    """The split ("train" or "test") of each of n rows: the last round(test_fraction * n) rows of a seeded
    permutation are test (at least one row in each split when n >= 2). Depends only on (n, fraction, seed)."""
    n_test = round(test_fraction * n)
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    perm = np.random.RandomState(seed).permutation(n)
    names = ["train"] * n
    for i in perm[n - n_test :]:
        names[int(i)] = "test"
    return names


def _build(
    rows: list[tuple],
    config: DataConfig,
    name: str,
    source: str,
    has_split: bool,
    fixed_split: str | None,
    id_prefix: str,
) -> tuple[list[Example], list[str]]:
    """(examples of every split, problems as "where: reason") from (record, where, error) rows."""
    answer_type = config.answer_type
    is_csv = source.lower().endswith(".csv")
    # The seeded split numbers all rows, bad ones included, so skipping a bad row moves no other row.
    auto_split = (
        None
        if (has_split or fixed_split)
        else seeded_split(len(rows), config.test_fraction, config.split_seed)
    )
    problems, examples, seen_ids = [], [], {}
    for r, (record, where, error) in enumerate(rows):
        if error:
            problems.append(f"{where}: {error}")
            continue
        try:
            question = _get(record, config.question_field)
            if question is _MISSING or question is None or not str(question).strip():
                raise ValueError(f"no question (field {config.question_field!r} missing or empty)")
            if not isinstance(question, str):
                raise ValueError(f"question must be text, got {type(question).__name__}")
            choices = ()
            if answer_type == "choice":
                raw = _get(record, config.choices_field)
                if raw is _MISSING or raw is None:
                    raise ValueError(f"no choices (field {config.choices_field!r} missing)")
                choices = parse_choices(_csv_choices(raw) if is_csv else raw)
            gold = _get(record, config.answer_field)
            if gold is _MISSING:
                raise ValueError(f"no gold answer (field {config.answer_field!r} missing)")
            gold = parse_gold(answer_type, gold, choices)
            if fixed_split:
                split = fixed_split
            elif has_split:
                split = _get(record, config.split_field)
                if split is _MISSING or split is None or not str(split).strip():
                    raise ValueError(f"no split (field {config.split_field!r} missing or empty)")
                split = str(split).strip()
            else:
                split = auto_split[r]
            if config.id_field:
                raw_id = _get(record, config.id_field)
                if raw_id is _MISSING or raw_id is None or not str(raw_id).strip():
                    raise ValueError(f"no id (field {config.id_field!r} missing or empty)")
                ex_id = str(raw_id).strip()
            else:
                ex_id = f"{id_prefix}-{r}"
            if ex_id in seen_ids:
                raise ValueError(f"duplicate id {ex_id!r} (first at {seen_ids[ex_id]})")
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        seen_ids[ex_id] = where
        meta = {"source": source, "location": where, "row": r}
        examples.append(
            Example(
                id=ex_id,
                question=question.strip(),
                gold=gold,
                answer_type=answer_type,
                choices=choices,
                dataset=name,
                split=split,
                meta=meta,
            )
        )
    return examples, problems
