"""The 12 Reasoning Teachers datasets (Ho et al., ACL 2023), read from their original files.

A split index is a global row number: read a dataset's files in the order listed in `BUILTINS`, number
their rows from 0 (JSON array elements, JSONL lines, or the `examples` list of a task object), and the
row is `Example.id = f"{key}-{index}"`. The data folder's README.md explains every quirk handled here.

AQuA is the exception: the split's 10,000 train indices point into AQuA's train.json, which the data
folder does not have. Its train split here is AQuA's official dev set (dev.json, 254 rows) as a small
training pool, with ids "aqua-dev-{row}" that cannot collide with the test ids "aqua-{index}".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..records import BUILTIN_ANSWER_TYPES, CHOICE_LETTERS, Example
from .common import DataError, LoadReport, parse_choices, parse_gold, settle_bad_rows

DATA_DIR_ENV = "SML_DATA_DIR"
PROMPTS_FILE = "prompts/few_shot_cot_prompts.json"
AQUA_TRAIN_NOTE = (
    "AQuA train: the split's 10,000 train rows (from AQuA train.json) are not in the data folder; "
    "train here is AQuA's official dev set (reasoning/aqua/dev.json, 254 rows, ids aqua-dev-N)."
)
BIGBENCH_CANARY_NOTE = "BIG-bench task with a canary string: keep it out of any published training corpus."


@dataclass(frozen=True)
class Builtin:
    key: str
    files: tuple[str, ...]  # relative to the data dir, in split-index (concatenation) order
    description: str
    notes: tuple[str, ...] = ()

    @property
    def answer_type(self) -> str:
        return BUILTIN_ANSWER_TYPES[self.key]


BUILTINS: dict[str, Builtin] = {
    b.key: b
    for b in [
        Builtin(
            "single_eq",
            ("reasoning/single_eq/questions.json",),
            "SingleEq: one-equation arithmetic word problems",
            (
                "134 golds are not integers.",
                "Shares 111 questions with addsub (same golds): do not train on one and test on the other.",
                "Rows 138 and 275 are duplicates (both train).",
            ),
        ),
        Builtin(
            "addsub",
            ("reasoning/addsub/AddSub.json",),
            "AddSub: addition/subtraction word problems",
            (
                "Questions are tokenised (a space before '.' and '?'), kept as is.",
                "Shares 111 questions with single_eq (same golds).",
            ),
        ),
        Builtin(
            "multiarith",
            ("reasoning/multiarith/MultiArith.json",),
            "MultiArith: multi-step arithmetic",
            (
                "Rows 40-49 = 50-59 and 340-349 = 350-359; 5 test questions also occur in train "
                "(40/50, 41/51, 42/52, 48/58, 342/352).",
            ),
        ),
        Builtin(
            "gsm8k",
            ("reasoning/gsm8k/train.jsonl", "reasoning/gsm8k/test.jsonl"),
            "GSM8K: grade-school math word problems",
            (
                "Gold = text after '####' (commas removed). The worked solution is human-written: "
                "meta['human_rationale'] only.",
            ),
        ),
        Builtin(
            "aqua",
            ("reasoning/aqua/test.json",),
            "AQuA: algebra word problems with 5 options",
            (
                AQUA_TRAIN_NOTE,
                "The human rationale is kept in meta['human_rationale'] only.",
                "Test row 29 (aqua-97496) writes its options 'A)A)59': read as '59'.",
                "8 questions repeat a choice text (4 of them the gold's): grade letters, not texts, there.",
            ),
        ),
        Builtin(
            "svamp",
            ("reasoning/svamp/SVAMP.json",),
            "SVAMP: varied arithmetic word problems",
            ("Question = Body + ' ' + Question.",),
        ),
        Builtin(
            "date_understanding",
            ("reasoning/date_understanding/task.json",),
            "BIG-bench Date Understanding: date arithmetic, 5-6 options",
            (
                "Options shuffled exactly as Reasoning Teachers does (RandomState(0), one draw per row).",
                "Few-shot exemplar rows 53 and 143 are in the test split.",
                BIGBENCH_CANARY_NOTE,
            ),
        ),
        Builtin(
            "tracking_shuffled_objects",
            ("reasoning/tracking_shuffled_objects/task.json",),
            "BIG-bench Tracking Shuffled Objects (three objects), 3 options",
            (
                "The question is an unfinished sentence that an option completes.",
                "No few-shot prompt in the shared prompts file.",
                BIGBENCH_CANARY_NOTE,
            ),
        ),
        Builtin(
            "last_letter_concatenation",
            ("reasoning/last_letter_concatenation/last_letters.json",),
            "Last Letter Concatenation: join the last letters of 4 names",
            ("Gold compared exactly; in 15 rows a name has two words, row 110's gold is 'yaeA'.",),
        ),
        Builtin(
            "coin_flip",
            ("reasoning/coin_flip/coin_flip.json",),
            "Coin Flip: is the coin still heads up?",
            ("Every row has 4 people.",),
        ),
        Builtin(
            "commonsense_qa",
            (
                "reasoning/commonsense_qa/train_rand_split.jsonl",
                "reasoning/commonsense_qa/dev_rand_split.jsonl",
            ),
            "CommonsenseQA: commonsense questions with 5 options",
            (
                "Test split = the official dev file (the official test file has no answers).",
                "146 questions repeat a choice text (48 of them the gold's): grade letters, not texts.",
                "Rows 4318 and 5016 (train) share a stem up to case, with different choices and answers.",
            ),
        ),
        Builtin(
            "strategy_qa",
            ("reasoning/strategy_qa/task.json",),
            "BIG-bench StrategyQA: implicit multi-hop yes/no",
            (
                "The human-written facts ('target') are kept in meta['human_rationale'] only.",
                "Few-shot exemplar rows 0, 3 and 7 are in the test split; rows 42 (train) and 1987 (test) "
                "share a question.",
                BIGBENCH_CANARY_NOTE,
            ),
        ),
    ]
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The shared data folder: `data_dir` if given, else the environment variable SML_DATA_DIR, else the
    folder `sml data download` fills by default (when it exists)."""
    from .download import default_download_dir

    how = "given as data_dir"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        how = f"from ${DATA_DIR_ENV}"
    if data_dir is None and default_download_dir().is_dir():
        data_dir, how = default_download_dir(), "the default folder of `sml data download`"
    if data_dir is None:
        raise DataError(
            f"no data folder given: pass --data-dir PATH (data_dir=...) or set the environment variable "
            f"{DATA_DIR_ENV}=PATH to the folder holding splits/ and reasoning/, or fetch the datasets "
            f"with `sml data download all` (into {default_download_dir()}, read by default). "
            "Without data files, use a synthetic dataset (synthetic_coin_flip, synthetic_last_letters)."
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data folder {str(path)!r} ({how}) does not exist or is not a folder: pass --data-dir PATH "
            f"or set {DATA_DIR_ENV}=PATH to the folder holding splits/ and reasoning/"
        )
    return path


def _data_file(data_dir: Path, rel: str) -> Path:
    path = data_dir / rel
    if not path.is_file():
        key = rel.split("/")[1] if rel.startswith("reasoning/") else Path(rel).stem if "splits/" in rel else "all"
        raise DataError(f"missing data file {rel} in data folder {str(data_dir)!r} (expected {path}); "
                        f"fetch it with `sml data download {key} --to {data_dir}`")
    return path


def _read_json(data_dir: Path, rel: str):
    path = _data_file(data_dir, rel)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{rel}:{err.lineno}: not valid JSON ({err.msg})") from None


def _read_rows(data_dir: Path, rel: str) -> list[tuple[dict, dict]]:
    """(record, location) per row of one file; location = {"source": file, "row": r, "line": n (JSONL)}."""
    if rel.endswith(".jsonl") or rel.startswith("reasoning/aqua/"):  # AQuA's .json files are JSON Lines
        path = _data_file(data_dir, rel)
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{rel}:{line_no}: not valid JSON ({err.msg})") from None
            rows.append((record, {"source": rel, "row": len(rows), "line": line_no}))
        return rows
    data = _read_json(data_dir, rel)
    if isinstance(data, dict):
        if not isinstance(data.get("examples"), list):
            raise DataError(f"{rel}: expected a JSON array or an object with an 'examples' list")
        data = data["examples"]
    return [(record, {"source": rel, "row": r}) for r, record in enumerate(data)]


def _where(loc: dict) -> str:
    return f"{loc['source']}:{loc['line']}" if "line" in loc else f"{loc['source']}[row {loc['row']}]"


def _read_split(data_dir: Path, key: str, n_rows: int) -> dict[str, list[int]]:
    rel = f"splits/{key}.json"
    split = _read_json(data_dir, rel)
    if not isinstance(split, dict) or not all(isinstance(split.get(s), list) for s in ("train", "test")):
        raise DataError(f"{rel}: expected {{'train': [int, ...], 'test': [int, ...]}}")
    for name in ("train", "test"):
        bad = [i for i in split[name] if not isinstance(i, int) or not 0 <= i < n_rows]
        # AQuA's train indices point into the absent train.json; they are checked and replaced by the caller.
        if bad and not (key == "aqua" and name == "train"):
            raise DataError(f"{rel}: {name} index {bad[0]!r} is not a row of {key} ({n_rows} rows)")
    return {"train": sorted(split["train"]), "test": sorted(split["test"])}


# One function per dataset: raw record -> (question, gold as stored, choices, meta). Golds are parsed after.
def _math_qa(r):  # SingleEq, AddSub, MultiArith
    return r["sQuestion"], r["lSolutions"][0], (), {"equations": r["lEquations"], "iIndex": r["iIndex"]}


def _gsm8k(r):
    solution = r["answer"]
    if solution.count("####") != 1:
        raise ValueError("answer has no single '####' line")
    return (
        r["question"],
        solution.split("####")[1].strip(),
        (),
        {"human_rationale": solution.split("####")[0].strip()},
    )


def _aqua(r):
    choices = parse_choices(r["options"])
    if not all(o[:2] == f"{letter})" for o, letter in zip(r["options"], CHOICE_LETTERS)):
        raise ValueError(f"options are not 'A)text', 'B)text', ...: {r['options']}")
    # Test row 29 (index 97496) doubles the prefix ("A)A)59"): the option text is "59".
    if all(c[:2] == f"{letter})" for c, letter in zip(choices, CHOICE_LETTERS)):
        choices = parse_choices(list(choices))
    return r["question"], r["correct"], choices, {"human_rationale": r.get("rationale", "")}


def _svamp(r):
    question = r["Body"].strip() + " " + r["Question"].strip()
    return question, r["Answer"], (), {"ID": r["ID"], "equation": r["Equation"], "type": r["Type"]}


def _bigbench_gold(r) -> str:
    right = [k for k, v in r["target_scores"].items() if v == 1]
    if len(right) != 1:
        raise ValueError(f"target_scores has {len(right)} options scored 1, expected exactly 1")
    return right[0]


def _tracking(r):
    # Options complete the unfinished `input` sentence and end with "."; RT keeps dict order, drops the ".".
    keys = list(r["target_scores"])
    choices = tuple(k.strip().removesuffix(".") for k in keys)
    gold = CHOICE_LETTERS[keys.index(_bigbench_gold(r))]
    return r["input"], gold, choices, {}


def _text_qa(r):
    return r["question"], r["answer"], (), {}


def _commonsense_qa(r):
    q = r["question"]
    meta = {"csqa_id": r["id"], "question_concept": q.get("question_concept")}
    return q["stem"], r["answerKey"], parse_choices(q["choices"]), meta


def _strategy_qa(r):
    gold = _bigbench_gold(r)
    # `target` is "Yes. <human-written facts>": a human rationale, so it goes to meta and nowhere else.
    return r["input"], gold, (), {"human_rationale": r.get("target", "")}


CONVERTERS = {
    "single_eq": _math_qa,
    "addsub": _math_qa,
    "multiarith": _math_qa,
    "gsm8k": _gsm8k,
    "aqua": _aqua,
    "svamp": _svamp,
    "tracking_shuffled_objects": _tracking,
    "last_letter_concatenation": _text_qa,
    "coin_flip": _text_qa,
    "commonsense_qa": _commonsense_qa,
    "strategy_qa": _strategy_qa,
    # date_understanding needs the running RandomState: see _date_rows
}


def _date_rows(records: list[dict]) -> list[tuple | Exception]:
    """Reasoning Teachers' Date lettering: the correct option is the first key in 364 of 369 rows, so RT
    shuffles. One RandomState(0) over the rows in file order, one permutation per row; key j goes to
    position perm[j]. Reproduced exactly (checked on row 20 and on the prompt exemplars). A bad row
    becomes its exception, after its draw, so the rows after it keep their lettering."""
    rng = np.random.RandomState(0)
    out = []
    for r in records:
        try:
            keys = list(r["target_scores"])
            perm = rng.permutation(range(len(keys)))
            choices = [""] * len(keys)
            for j, key in enumerate(keys):
                choices[perm[j]] = key
            gold = CHOICE_LETTERS[choices.index(_bigbench_gold(r))]
            out.append((r["input"], gold, tuple(choices), {"permutation": [int(p) for p in perm]}))
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            out.append(err)
    return out


def _convert(
    key: str,
    rows: list[tuple[dict, dict]],
    ids: list[str],
    indices: list[int | None],
    split_of: dict[int, str],
    report: LoadReport,
    on_bad_row: str,
) -> list[Example]:
    answer_type = BUILTIN_ANSWER_TYPES[key]
    problems, examples = [], []
    dated = _date_rows([r for r, _ in rows]) if key == "date_understanding" else None
    for i, (record, loc) in enumerate(rows):
        where = _where(loc)
        try:
            if dated and isinstance(dated[i], Exception):
                raise dated[i]
            question, gold, choices, meta = dated[i] if dated else CONVERTERS[key](record)
            question = question.strip()
            if not question:
                raise ValueError("no question")
            gold = parse_gold(answer_type, gold, choices)
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            problems.append(f"{where}: unexpected row format ({type(err).__name__}: {err})")
            continue
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        meta = {**loc, "index": indices[i], **meta}
        examples.append(
            Example(
                id=ids[i],
                question=question,
                gold=gold,
                answer_type=answer_type,
                choices=choices,
                dataset=key,
                split=split_of.get(i, ""),
                meta=meta,
            )
        )
    settle_bad_rows(problems, on_bad_row, key, report)
    return examples


def load_builtin(
    key: str, data_dir: str | Path | None = None, on_bad_row: str = "error"
) -> tuple[dict[str, list[Example]], LoadReport]:
    """Both splits of built-in dataset `key` ({"train": [...], "test": [...]}, each in index order) and a
    report. Shipped files are clean, so a bad row there means a changed file: it fails unless skipped."""
    if key not in BUILTINS:
        raise DataError(f"unknown built-in dataset {key!r}; known: {', '.join(BUILTINS)}")
    root = resolve_data_dir(data_dir)
    spec = BUILTINS[key]
    rows = [row for rel in spec.files for row in _read_rows(root, rel)]
    report = LoadReport(source=f"{key} ({root})")
    offset = 97467 if key == "aqua" else 0  # AQuA test indices follow the 97,467 absent train rows
    split = _read_split(root, key, offset + len(rows))
    if key == "aqua":
        bad = [i for i in split["test"] if i < offset]
        if bad:
            raise DataError(f"splits/aqua.json: test index {bad[0]} is not a row of reasoning/aqua/test.json")
    split_of = {i - offset: name for name in ("train", "test") for i in split[name] if i >= offset}
    indices = [offset + i for i in range(len(rows))]
    every = _convert(key, rows, [f"{key}-{i}" for i in indices], indices, split_of, report, on_bad_row)
    out = {name: [ex for ex in every if ex.split == name] for name in ("train", "test")}
    if key == "aqua":
        dev = _read_rows(root, "reasoning/aqua/dev.json")
        dev_ids = [f"aqua-dev-{r}" for r in range(len(dev))]
        out["train"] = _convert(
            key, dev, dev_ids, [None] * len(dev), dict.fromkeys(range(len(dev)), "train"), report, on_bad_row
        )
        report.notes.append(AQUA_TRAIN_NOTE)
        rows = rows + dev
    report.rows = len(rows)
    report.loaded = len(out["train"]) + len(out["test"])
    return out, report


def few_shot_prompt(key: str, data_dir: str | Path | None = None) -> str | None:
    """The Reasoning Teachers few-shot chain-of-thought prompt of built-in dataset `key`, or None when
    the prompts file has none (tracking_shuffled_objects, non-built-in datasets)."""
    if key not in BUILTINS:
        return None
    entry = _read_json(resolve_data_dir(data_dir), PROMPTS_FILE).get(key)
    return entry["prompt"] if entry else None


def few_shot_exemplar_ids(key: str, data_dir: str | Path | None = None) -> list[str]:
    """Ids of the dataset rows shown as exemplars in `key`'s few-shot prompt, so evaluation can leave them
    out (Date rows 53, 143 and StrategyQA rows 0, 3, 7 are test rows). AQuA's ids name rows of the absent
    AQuA train.json, so they match nothing loaded here."""
    if key not in BUILTINS:
        return []
    entry = _read_json(resolve_data_dir(data_dir), PROMPTS_FILE).get(key)
    return [f"{key}-{i}" for i in entry["sample_indices"]] if entry else []
