"""Datasets layer: built-in loaders against the shared data README, user data, bad rows, synthetic tasks."""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from pathlib import Path

import pytest

from selfmotivated.data import (
    DataConfig,
    DataError,
    describe_dataset,
    few_shot_exemplar_ids,
    few_shot_prompt,
    format_description,
    gen_coin_flip,
    gen_last_letters,
    list_datasets,
    load_dataset_split,
    load_examples,
    resolve_data_dir,
    seeded_split,
)
from selfmotivated.data.builtin import BUILTINS, load_builtin
from selfmotivated.data.synthetic import first_names
from selfmotivated.records import BUILTIN_ANSWER_TYPES

# README table: key -> (train, test)
SPLIT_SIZES = {
    "single_eq": (356, 152),
    "addsub": (276, 119),
    "multiarith": (420, 180),
    "gsm8k": (7473, 1319),
    "aqua": (254, 254),
    "svamp": (700, 300),
    "date_understanding": (258, 111),
    "tracking_shuffled_objects": (525, 225),
    "last_letter_concatenation": (350, 150),
    "coin_flip": (350, 150),
    "commonsense_qa": (9741, 1221),
    "strategy_qa": (1603, 687),
}


def _shared_data_dir() -> Path:
    env = os.environ.get("SML_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = _shared_data_dir()
    if not (path / "splits").is_dir():
        pytest.skip(f"shared reasoning data not found at {path} (set SML_DATA_DIR to run these tests)")
    return path


@pytest.fixture(scope="module")
def builtin(data_dir):
    """key -> {"train": [...], "test": [...], "by_id": {...}}, loaded once for the module."""
    out = {}
    for key in BUILTINS:
        splits, report = load_builtin(key, data_dir)
        assert report.skipped == 0
        out[key] = {**splits, "by_id": {ex.id: ex for ex in splits["train"] + splits["test"]}}
    return out


# ----------------------------------------------------------------------------------------------- built-in


def test_every_builtin_has_readme_split_sizes_and_clean_records(builtin):
    assert set(builtin) == set(SPLIT_SIZES)
    for key, (n_train, n_test) in SPLIT_SIZES.items():
        train, test = builtin[key]["train"], builtin[key]["test"]
        assert (len(train), len(test)) == (n_train, n_test), key
        ids = [ex.id for ex in train + test]
        assert len(set(ids)) == len(ids), key
        for split, examples in (("train", train), ("test", test)):
            for ex in examples:
                assert ex.split == split and ex.dataset == key and ex.answer_type == BUILTIN_ANSWER_TYPES[key]
                assert ex.question == ex.question.strip() and ex.question
                if ex.answer_type == "choice":
                    assert ex.gold in ex.choice_letters and len(ex.choices) >= 3
                else:
                    assert ex.choices == ()
                if ex.answer_type == "yes_no":
                    assert ex.gold in ("yes", "no")
        if key != "aqua":
            # Split order is index order, and the ids are "<key>-<global row index>".
            indices = [int(ex.id.rsplit("-", 1)[1]) for ex in test]
            assert indices == sorted(indices) and all(ex.meta["index"] == i for ex, i in zip(test, indices))
        assert len({ex.question for ex in train} | {ex.question for ex in test}) > 0.9 * len(ids)


def test_split_indices_come_from_the_split_files(builtin, data_dir):
    for key in ("single_eq", "date_understanding", "strategy_qa"):
        split = json.loads((data_dir / "splits" / f"{key}.json").read_text())
        assert [ex.id for ex in builtin[key]["test"]] == [f"{key}-{i}" for i in split["test"]]
        assert [ex.id for ex in builtin[key]["train"]] == [f"{key}-{i}" for i in split["train"]]


def test_row_20_matches_reasoning_teachers(builtin):
    # Row 20 of each processed dataset as printed by RT's data-preparation notebook (README, check 3).
    expected = {
        "single_eq": ("Sam had 9 dimes in his bank. His dad gave him 7 more dimes.", "16"),
        "addsub": ("Melanie had 7 dimes in her bank . Her dad gave her 8 dimes", "19"),
        "multiarith": ("For the school bake sale Katie made pastries.", "4"),
        "gsm8k": ("Bella bought stamps at the post office.", "38"),
        "svamp": ("Baker made 121 cakes. He sold 105 of them and bought 170 new cakes. How many", "186"),
        "date_understanding": ("Tomorrow is 11/12/2019. What is the date yesterday in MM/DD/YYYY?", "C"),
        "tracking_shuffled_objects": ("Alice, Bob, and Claire are playing a game.", "A"),
        "last_letter_concatenation": (
            'Take the last letters of each words in "Jessy Libby Danielle Red"',
            "yyed",
        ),
        "coin_flip": ("A coin is heads up. Jessy does not flip the coin.", "yes"),
        "commonsense_qa": ("What does playing soccer for a long time lead to?", "E"),
        "strategy_qa": ("Karachi was a part of Alexander the Great's success?", "yes"),
    }
    for key, (start, gold) in expected.items():
        ex = builtin[key]["by_id"][f"{key}-20"]
        assert ex.question.startswith(start) and ex.gold == gold, key
    date = builtin["date_understanding"]["by_id"]["date_understanding-20"]
    assert date.choices[2] == "11/10/2019" and len(date.choices) == 6
    assert builtin["commonsense_qa"]["by_id"]["commonsense_qa-20"].choices[4] == "getting tired"
    # SVAMP joins Body and Question with one space.
    assert "new cakes. How many cakes" in builtin["svamp"]["by_id"]["svamp-20"].question


def test_number_golds(builtin):
    every = lambda key: builtin[key]["train"] + builtin[key]["test"]  # noqa: E731
    assert sum("." in ex.gold for ex in every("single_eq")) == 134
    assert sum("." in ex.gold for ex in every("addsub")) == 126
    assert builtin["single_eq"]["by_id"]["single_eq-0"].gold == "43"  # stored as 43.0
    for key in ("multiarith", "svamp", "gsm8k"):
        assert all(re.fullmatch(r"-?\d+", ex.gold) for ex in every(key)), key
    gsm = builtin["gsm8k"]["by_id"]
    assert gsm["gsm8k-367"].gold == "850000" and gsm["gsm8k-345"].gold == "1080"  # "850,000", "1,080"
    assert sum(ex.gold.startswith("-") for ex in every("gsm8k")) == 5
    assert "####" not in gsm["gsm8k-0"].question and "<<" in gsm["gsm8k-0"].meta["human_rationale"]


def test_date_lettering_reproduces_reasoning_teachers(builtin, data_dir):
    date = builtin["date_understanding"]
    letters = collections.Counter(ex.gold for ex in date["train"] + date["test"])
    assert letters == {"A": 58, "B": 63, "C": 69, "D": 63, "E": 57, "F": 59}
    # The prompt's 6 exemplars are dataset rows lettered by RT's shuffle: same options, same letters.
    prompt = few_shot_prompt("date_understanding", data_dir)
    blocks = re.findall(
        r"Q: (.*?) Which choice is true\? Answer choices: (.*?)\.\nA: .*?The answer is ([A-F])", prompt
    )
    ids = few_shot_exemplar_ids("date_understanding", data_dir)
    assert len(blocks) == len(ids) == 6
    for (question, options, answer), ex_id in zip(blocks, ids):
        ex = date["by_id"][ex_id]
        assert ex.question == question and ex.gold == answer
        assert ex.choices == tuple(text for _, text in re.findall(r"\(([A-F])\) ([^,]+)", options))


def test_tracking_options_drop_the_final_period_and_keep_dict_order(builtin):
    objects = builtin["tracking_shuffled_objects"]
    examples = objects["train"] + objects["test"]
    assert all(not c.endswith(".") and c == c.strip() for ex in examples for c in ex.choices)
    assert collections.Counter(ex.gold for ex in examples) == {"A": 250, "B": 250, "C": 250}
    assert all(ex.question == ex.question.rstrip() for ex in examples)  # `input` ends with 1-2 spaces
    assert objects["by_id"]["tracking_shuffled_objects-20"].question.endswith(
        "At the end of the game, Claire has the"
    )
    assert objects["by_id"]["tracking_shuffled_objects-20"].choices == (
        "blue ball",
        "yellow ball",
        "green ball",
    )


def test_choice_datasets(builtin):
    aqua = builtin["aqua"]
    assert collections.Counter(ex.gold for ex in aqua["test"]) == {
        "A": 63,
        "B": 58,
        "C": 46,
        "D": 53,
        "E": 34,
    }
    assert aqua["test"][0].id == "aqua-97467" and aqua["test"][-1].id == "aqua-97720"
    assert aqua["train"][0].id == "aqua-dev-0" and aqua["train"][0].choices[0] == "32400"  # "A)32400"
    assert not {ex.id for ex in aqua["train"]} & {ex.id for ex in aqua["test"]}
    assert all(len(ex.choices) == 5 for ex in aqua["train"] + aqua["test"])
    assert not any(re.match(r"[A-E]\)", c) for ex in aqua["train"] + aqua["test"] for c in ex.choices)
    assert aqua["test"][29].choices == ("59", "69", "79", "89", "99")  # stored as "A)A)59", ...
    csqa = builtin["commonsense_qa"]["by_id"]
    first_test = builtin["commonsense_qa"]["test"][
        0
    ]  # dev_rand_split.jsonl line 1 follows the 9741 train rows
    assert first_test.id == "commonsense_qa-9741" and first_test.gold == "A"
    assert first_test.choices == ("bank", "library", "department store", "mall", "new york")
    assert csqa["commonsense_qa-4318"].question.lower() == csqa["commonsense_qa-5016"].question.lower()
    # Repeated choice texts are kept as stored (the answer checker must grade letters there).
    assert csqa["commonsense_qa-69"].choices == (
        "new york",
        "coastal cities",
        "city",
        "coastal cities",
        "boston",
    )


def test_yes_no_and_text_datasets(builtin):
    strategy = builtin["strategy_qa"]
    examples = strategy["train"] + strategy["test"]
    assert collections.Counter(ex.gold for ex in examples) == {"yes": 1071, "no": 1219}
    pear = next(ex for ex in examples if ex.question == "Would a pear sink in water?")
    assert pear.gold == "no" and pear.meta["human_rationale"].startswith("No. The density")
    # The human-written facts must not leak into anything a stage would train on.
    assert all("density" not in json.dumps(ex.to_dict()) for ex in [pear])
    coins = builtin["coin_flip"]
    assert collections.Counter(ex.gold for ex in coins["train"] + coins["test"]) == {"yes": 253, "no": 247}
    letters = builtin["last_letter_concatenation"]["by_id"]
    assert letters["last_letter_concatenation-110"].gold == "yaeA"
    assert letters["last_letter_concatenation-0"].gold == "yajo"


def test_few_shot_prompts_and_exemplars(builtin, data_dir):
    assert few_shot_prompt("tracking_shuffled_objects", data_dir) is None
    assert few_shot_prompt("gsm8k", data_dir).startswith("Q: ")
    assert few_shot_exemplar_ids("gsm8k", data_dir) == []
    test_ids = lambda key: {ex.id for ex in builtin[key]["test"]}  # noqa: E731
    date_ids = few_shot_exemplar_ids("date_understanding", data_dir)
    assert set(date_ids) & test_ids("date_understanding") == {
        "date_understanding-53",
        "date_understanding-143",
    }
    assert set(few_shot_exemplar_ids("strategy_qa", data_dir)) & test_ids("strategy_qa") == {
        "strategy_qa-0",
        "strategy_qa-3",
        "strategy_qa-7",
    }
    coin_ids = few_shot_exemplar_ids("coin_flip", data_dir)
    prompt = few_shot_prompt("coin_flip", data_dir)
    assert len(coin_ids) == 8 and all(builtin["coin_flip"]["by_id"][i].question in prompt for i in coin_ids)


def test_describe_and_list(data_dir):
    keys = [d["key"] for d in list_datasets()]
    assert set(SPLIT_SIZES) <= set(keys) and {"synthetic_coin_flip", "synthetic_last_letters"} <= set(keys)
    assert all(d["source"] in ("builtin", "synthetic", "rg") and d["answer_type"] for d in list_datasets())
    desc = describe_dataset("aqua", data_dir)
    assert desc["counts"] == {"train": 254, "test": 254} and desc["answer_type"] == "choice"
    assert len(desc["examples"]["train"]) == 3 and len(desc["examples"]["test"]) == 3
    assert any("dev.json" in note for note in desc["notes"])
    text = format_description(desc)
    assert "train 254, test 254" in text and "(A) 32400" in text and "aqua-dev-0" in text
    strategy = describe_dataset("strategy_qa", data_dir)
    assert "human_rationale" not in json.dumps(strategy["examples"])


def test_limit_and_convenience(data_dir):
    first = load_dataset_split("svamp", "test", data_dir=data_dir, limit=5)
    full = load_examples(DataConfig(dataset="svamp", split="test", data_dir=str(data_dir)))
    assert [ex.id for ex in first] == [ex.id for ex in full[:5]] and len(first) == 5
    assert first.report.loaded == 5 and full.report.rows == 1000


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SML_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"--data-dir.*SML_DATA_DIR"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="no data folder"):
        load_dataset_split("gsm8k")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        resolve_data_dir(missing)
    monkeypatch.setenv("SML_DATA_DIR", str(missing))
    with pytest.raises(DataError, match=r"SML_DATA_DIR.*--data-dir|--data-dir.*SML_DATA_DIR"):
        resolve_data_dir(None)
    # A data dir without the dataset's file: the error names that file.
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "coin_flip.json").write_text('{"train": [0], "test": [1]}')
    with pytest.raises(DataError, match="reasoning/coin_flip/coin_flip.json"):
        load_dataset_split("coin_flip", data_dir=tmp_path)


def test_builtin_loader_on_a_fabricated_data_dir(tmp_path):
    # Runs without the shared data: a two-row coin_flip in the original format, then a corrupted row.
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "coin_flip.json").write_text('{"train": [1], "test": [0]}')
    path = tmp_path / "reasoning" / "coin_flip" / "coin_flip.json"
    path.parent.mkdir(parents=True)
    rows = [
        {"question": " A coin is heads up. Ana flips the coin. ", "answer": "no"},
        {"question": "A coin is heads up. Bo does not flip the coin.", "answer": "yes"},
    ]
    path.write_text(json.dumps({"examples": rows}))
    test = load_dataset_split("coin_flip", "test", data_dir=tmp_path)
    assert [(ex.id, ex.question, ex.gold) for ex in test] == [
        ("coin_flip-0", "A coin is heads up. Ana flips the coin.", "no")
    ]
    rows[1]["answer"] = "maybe"
    path.write_text(json.dumps({"examples": rows}))
    with pytest.raises(DataError, match=r"coin_flip\.json\[row 1\]: gold 'maybe' is not yes or no"):
        load_dataset_split("coin_flip", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match="split must be train or test"):
        load_dataset_split("coin_flip", "dev", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ user data


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_user_jsonl_round_trip_with_choice_gold_as_text(tmp_path):
    path = _write_jsonl(
        tmp_path / "quiz.jsonl",
        [
            {
                "q": "Pick the fruit.",
                "a": "apple",
                "opts": ["stone", "apple", "chair"],
                "split": "train",
                "key": "k1",
            },
            {"q": "Pick the animal.", "a": "B", "opts": ["A) rock", "B) cat"], "split": "test", "key": "k2"},
            {
                "q": "Pick the colour.",
                "a": "(C)",
                "opts": {"A": "two", "C": "red", "B": "ten"},
                "split": "test",
                "key": "k3",
            },
            {
                "q": "Pick the tool.",
                "a": "Hammer",
                "opts": [{"label": "A", "text": "hammer"}, {"label": "B", "text": "cloud"}],
                "split": "test",
                "key": 4,
            },
        ],
    )
    config = dict(
        dataset=str(path),
        answer_type="choice",
        question_field="q",
        answer_field="a",
        choices_field="opts",
        id_field="key",
    )
    train = load_examples(DataConfig(split="train", **config))
    assert [(ex.id, ex.gold, ex.choices, ex.split) for ex in train] == [
        ("k1", "B", ("stone", "apple", "chair"), "train")
    ]
    test = load_examples(DataConfig(split="test", **config))
    assert [(ex.id, ex.gold, ex.choices) for ex in test] == [
        ("k2", "B", ("rock", "cat")),
        ("k3", "C", ("two", "ten", "red")),
        ("4", "A", ("hammer", "cloud")),
    ]
    assert test[0].dataset == "quiz" and test[0].meta["location"] == f"{path}:2"


def test_user_jsonl_number_yes_no_text_and_nested_fields(tmp_path):
    path = _write_jsonl(
        tmp_path / "n.jsonl",
        [
            {"question": " How many? ", "answer": "1,250", "split": "test"},
            {"question": "Half of 3?", "answer": 1.5, "split": "test"},
            {"question": "Steps?", "answer": "3 + 4 = 7\n#### 7", "split": "test"},
        ],
    )
    test = load_dataset_split(str(path), "test", answer_type="number")
    assert [(ex.id, ex.question, ex.gold) for ex in test] == [
        ("n-0", "How many?", "1250"),
        ("n-1", "Half of 3?", "1.5"),
        ("n-2", "Steps?", "7"),
    ]
    path = _write_jsonl(
        tmp_path / "yn.jsonl",
        [
            {"item": {"text": "Is ice cold?"}, "label": "Yes", "split": "test"},
            {"item": {"text": "Is fire cold?"}, "label": False, "split": "test"},
        ],
    )
    test = load_dataset_split(
        str(path), "test", answer_type="yes_no", question_field="item.text", answer_field="label"
    )
    assert [(ex.question, ex.gold) for ex in test] == [("Is ice cold?", "yes"), ("Is fire cold?", "no")]
    path = _write_jsonl(tmp_path / "t.jsonl", [{"question": "Join.", "answer": "yaeA", "split": "test"}])
    assert load_dataset_split(str(path), "test", answer_type="text")[0].gold == "yaeA"


def test_user_csv_round_trip(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text(
        "id,question,answer,choices\n"
        'a,"Which is a bird?\nPick one.",sparrow,owl | sparrow\n'  # a quoted question over two lines
        'b,Which is red?,A,"[""blood"", ""grass""]"\n'
        'c,Which is wet?,water,"{""A"": ""sand"", ""B"": ""water""}"\n'
    )
    examples = load_dataset_split(
        str(path),
        "train",
        answer_type="choice",
        choices_field="choices",
        id_field="id",
        test_fraction=0.5,
        split_seed=1,
    )
    examples += load_dataset_split(
        str(path),
        "test",
        answer_type="choice",
        choices_field="choices",
        id_field="id",
        test_fraction=0.5,
        split_seed=1,
    )
    by_id = {ex.id: ex for ex in examples}
    assert set(by_id) == {"a", "b", "c"}
    assert (by_id["a"].question, by_id["a"].choices, by_id["a"].gold) == (
        "Which is a bird?\nPick one.",
        ("owl", "sparrow"),
        "B",
    )
    assert (by_id["b"].choices, by_id["b"].gold) == (("blood", "grass"), "A")
    assert (by_id["c"].choices, by_id["c"].gold) == (("sand", "water"), "B")
    assert by_id["c"].meta["location"] == f"{path}:5"  # line numbers count the two-line cell


def test_user_hf_folder_round_trip(tmp_path):
    import datasets

    rows = {"question": ["One?", "Two?", "Three?"], "answer": ["1", "2", "3"]}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "test": datasets.Dataset.from_dict({"question": ["Four?"], "answer": ["4"]}),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    train = load_dataset_split(str(tmp_path / "dd"), "train", answer_type="number")
    test = load_dataset_split(str(tmp_path / "dd"), "test", answer_type="number")
    assert [(ex.id, ex.gold) for ex in train] == [
        ("dd-train-0", "1"),
        ("dd-train-1", "2"),
        ("dd-train-2", "3"),
    ]
    assert [(ex.id, ex.question, ex.gold) for ex in test] == [("dd-test-0", "Four?", "4")]
    with pytest.raises(DataError, match=r"no examples in split 'validation'.*\['test', 'train'\]"):
        load_dataset_split(str(tmp_path / "dd"), "validation", answer_type="number")
    # One Dataset with a choices column as {"label": [...], "text": [...]} (the Hub's CommonsenseQA layout).
    choice_rows = {
        "question": ["Sky?", "Grass?"],
        "answerKey": ["sky blue", "B"],
        "choices": [
            {"label": ["A", "B"], "text": ["Sky blue", "red"]},
            {"label": ["A", "B"], "text": ["blue", "green"]},
        ],
        "split": ["test", "test"],
    }
    datasets.Dataset.from_dict(choice_rows).save_to_disk(str(tmp_path / "single"))
    test = load_dataset_split(
        str(tmp_path / "single"),
        "test",
        answer_type="choice",
        answer_field="answerKey",
        choices_field="choices",
    )
    assert [(ex.gold, ex.choices) for ex in test] == [("A", ("Sky blue", "red")), ("B", ("blue", "green"))]


def test_seeded_split_is_deterministic_and_covers_every_row(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"question": f"Q{i}?", "answer": i} for i in range(20)])

    def ids(split, seed=0):
        return [ex.id for ex in load_dataset_split(str(path), split, answer_type="number", split_seed=seed)]

    train, test = ids("train"), ids("test")
    assert len(test) == 6 and len(train) == 14 and not set(train) & set(test)
    assert (train, test) == (ids("train"), ids("test"))
    assert ids("test", seed=1) != test
    assert seeded_split(20, 0.3, 0) == seeded_split(20, 0.3, 0)
    assert seeded_split(3, 0.01, 0).count("test") == 1  # never an empty split
    # A bad row skipped does not move any other row to the other split.
    lines = path.read_text().splitlines()
    lines[3] = '{"question": "Q3?", "answer": "three"}'
    path.write_text("\n".join(lines) + "\n")
    skipped = [ex.id for ex in load_dataset_split(str(path), "test", answer_type="number", on_bad_row="skip")]
    assert skipped == [i for i in test if i != "s-3"]


BAD_JSONL = [
    {"question": "Fine?", "answer": "yes", "id": "a"},  # line 1: good
    '{"question": "Broken?", "answer": ',  # line 2: malformed JSON
    {"answer": "yes", "id": "c"},  # line 3: no question
    {"question": "No gold?", "id": "d"},  # line 4: no gold
    {"question": "Maybe?", "answer": "maybe", "id": "e"},  # line 5: not yes/no
    "",  # line 6: blank, not a row
    {"question": "Again?", "answer": "no", "id": "a"},  # line 7: duplicate id
    {"question": "Good too?", "answer": "No.", "id": "g"},  # line 8: good
]


def test_bad_rows_fail_with_one_error_naming_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", BAD_JSONL)
    with pytest.raises(DataError) as err:
        load_dataset_split(str(path), "train", answer_type="yes_no", id_field="id")
    message = str(err.value)
    assert "5 bad row(s)" in message and "on_bad_row='skip'" in message
    assert err.value.problems == [
        f"{path}:2: malformed JSON (Expecting value at column 35)",
        f"{path}:3: no question (field 'question' missing or empty)",
        f"{path}:4: no gold answer (field 'answer' missing)",
        f"{path}:5: gold 'maybe' is not yes or no",
        f"{path}:7: duplicate id 'a' (first at {path}:1)",
    ]
    number = _write_jsonl(tmp_path / "num.jsonl", [{"question": "N?", "answer": "abc"}])
    with pytest.raises(DataError, match=re.escape(f"{number}:1: gold 'abc' is not a number")):
        load_dataset_split(str(number), "train", answer_type="number")
    choice = _write_jsonl(
        tmp_path / "ch.jsonl",
        [
            {"question": "C?", "answer": "F", "options": ["x", "y", "z"]},
            {"question": "D?", "answer": "w", "options": ["x", "y"]},
            {"question": "E?", "answer": "x", "options": ["x"]},
        ],
    )
    with pytest.raises(DataError) as err:
        load_dataset_split(str(choice), "train", answer_type="choice", choices_field="options")
    assert [p.split(": ", 1)[0] for p in err.value.problems] == [f"{choice}:{i}" for i in (1, 2, 3)]
    assert "gold letter 'F' is not among the choices A-C" in err.value.problems[0]
    assert "neither a choice letter (A-B) nor the text" in err.value.problems[1]
    assert "at least 2 choices" in err.value.problems[2]


def test_bad_csv_rows_and_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,answer\nOne?,1\nTwo?\nThree?,3,extra\n,4\nFive?,five\n")
    with pytest.raises(DataError) as err:
        load_dataset_split(str(path), "train", answer_type="number")
    assert err.value.problems == [
        f"{path}:3: row has 1 cells, the header has 2",
        f"{path}:4: row has 3 cells, the header has 2",
        f"{path}:5: no question (field 'question' missing or empty)",
        f"{path}:6: gold 'five' is not a number",
    ]
    with pytest.raises(DataError, match=re.escape(f"{path}:1: missing required column(s) ['solution']")):
        load_dataset_split(
            str(path), "train", answer_type="number", answer_field="solution", on_bad_row="skip"
        )


def test_skip_mode_counts_reports_and_warns(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "bad.jsonl", BAD_JSONL)
    config = dict(
        dataset=str(path), answer_type="yes_no", id_field="id", on_bad_row="skip", test_fraction=0.5
    )
    with caplog.at_level(logging.WARNING, logger="selfmotivated.data"):
        train = load_examples(DataConfig(split="train", **config))
    test = load_examples(DataConfig(split="test", **config))
    assert sorted(ex.id for ex in train + test) == ["a", "g"]
    assert train.report.skipped == 5 and len(train.report.problems) == 5 and train.report.rows == 7
    assert any("skipped 5 bad row(s)" in r.getMessage() for r in caplog.records)


def test_many_bad_rows_are_listed_up_to_twenty(tmp_path):
    path = _write_jsonl(tmp_path / "many.jsonl", [{"question": f"Q{i}?", "answer": "x"} for i in range(25)])
    with pytest.raises(DataError) as err:
        load_dataset_split(str(path), "train", answer_type="number")
    assert len(err.value.problems) == 25 and "... and 5 more" in str(err.value)
    assert f"{path}:20:" in str(err.value) and f"{path}:21:" not in str(err.value)


def test_user_data_config_errors(tmp_path):
    path = _write_jsonl(tmp_path / "u.jsonl", [{"question": "Q?", "answer": "1"}])
    with pytest.raises(DataError, match="answer_type is not set.*number, choice, yes_no, text"):
        load_dataset_split(str(path))
    with pytest.raises(DataError, match="choices_field"):
        load_dataset_split(str(path), answer_type="choice")
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*hf:owner/name"):
        load_dataset_split("nope")
    with pytest.raises(DataError, match="on_bad_row must be one of error, skip"):
        DataConfig(on_bad_row="ignore")
    with pytest.raises(DataError, match="is a built-in number dataset"):
        load_dataset_split("gsm8k", answer_type="text")


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_coin_flip_answers_and_determinism():
    data = gen_coin_flip(n_train=300, n_test=100, seed=3)
    assert (len(data["train"]), len(data["test"])) == (300, 100)
    for ex in data["train"] + data["test"]:
        flips = len(re.findall(r"\b[A-Z][a-z]+ flips the coin\.", ex.question))
        holds = len(re.findall(r"\b[A-Z][a-z]+ does not flip the coin\.", ex.question))
        assert flips + holds == 4 and ex.answer_type == "yes_no"
        assert ex.gold == ("yes" if flips % 2 == 0 else "no")
    golds = collections.Counter(ex.gold for ex in data["train"])
    assert 100 < golds["yes"] < 200  # both answers are common
    again = gen_coin_flip(n_train=300, n_test=100, seed=3)
    assert [ex.to_dict() for ex in again["train"] + again["test"]] == [
        ex.to_dict() for ex in data["train"] + data["test"]
    ]
    assert [ex.question for ex in gen_coin_flip(10, 10, seed=4)["test"]] != [
        ex.question for ex in data["test"][:10]
    ]
    # The test split does not depend on the train size; train and test share no question.
    assert [ex.question for ex in gen_coin_flip(n_train=5, n_test=100, seed=3)["test"]] == [
        ex.question for ex in data["test"]
    ]
    assert not {ex.question for ex in data["train"]} & {ex.question for ex in data["test"]}
    six = gen_coin_flip(n_train=3, n_test=0, n_people=6)["train"]
    assert all(ex.question.count("flip the coin.") + ex.question.count("flips the coin.") == 6 for ex in six)


def test_synthetic_last_letters_answers_and_disjoint_splits():
    data = gen_last_letters(n_train=200, n_test=60, seed=0)
    for ex in data["train"] + data["test"]:
        names = re.search(r'"(.*)"', ex.question).group(1).split()
        assert len(names) == 4 and ex.gold == "".join(name[-1] for name in names)
    questions = [ex.question for ex in data["train"] + data["test"]]
    assert len(set(questions)) == len(questions)
    ids = [ex.id for ex in data["train"] + data["test"]]
    assert len(set(ids)) == len(ids)
    # The synthetic prompt's exemplars are in no split.
    prompt = few_shot_prompt("synthetic_last_letters")
    assert prompt.count("Q: ") == 4 and not any(q in prompt for q in questions)
    for block in re.findall(r'"(.*)" and concatenate them\.\nA: .*The answer is (\w+)\.', prompt):
        assert block[1] == "".join(name[-1] for name in block[0].split())
    assert few_shot_exemplar_ids("synthetic_last_letters") == []


def test_synthetic_through_data_config_and_names():
    config = DataConfig(
        dataset="synthetic_coin_flip", split="train", n_train=40, n_test=10, synthetic_seed=7, limit=25
    )
    examples = load_examples(config)
    assert len(examples) == 25 and examples[0].id == "synthetic_coin_flip-train-0"
    assert [ex.question for ex in examples] == [
        ex.question for ex in gen_coin_flip(40, 10, seed=7)["train"][:25]
    ]
    names = first_names()
    assert len(names) >= 200 and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]+", name) for name in names)
