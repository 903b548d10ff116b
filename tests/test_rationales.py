"""Stage 1: wrong answers, checks, tiers and pairs, the resumable store (a real kill), export, bad settings.

Logic tests drive `run_generate` with `FakeGenerator`, which answers every prompt from a script and
records what it was asked; one end-to-end test runs the tiny random model through `make_generator`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from selfmotivated.answers import ANSWER_PREFIX
from selfmotivated.generation import Completion
from selfmotivated.records import Example
from selfmotivated.rationales import (
    DEFAULT_TIERS,
    GenerateConfig,
    RankConfig,
    RationaleStore,
    choose_wrong_answers,
    detect_leak,
    export,
    format_stats,
    load_pairs,
    load_sft_set,
    outcome,
    parse_tier_rules,
    rank_all,
    rationale_stats,
    run_generate,
    reasoning_before_answer,
    show_question,
    split_answer_line,
)
from selfmotivated.rationales.rank import compute_stats

REPO = Path(__file__).resolve().parents[1]
HINT_RE = re.compile(r"The answer is (.+?)\. Think step by step and explain")


# --------------------------------------------------------------------------------------------------
# helpers


def _h(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class FakeGenerator:
    """Generator.generate with scripted texts. Free and hinted samples are "... leads to A. The answer
    is B." with A and B drawn from (call seed, row position, prompt): so a resumed run reproduces a
    row only if it repeats the very same call. A forcing prompt (ending "The answer is") is answered
    with the A of the body it holds, i.e. where the reasoning "leads"."""

    def __init__(self, options=("yes", "no"), delay: float = 0.0, leak_every: int = 0):
        self.options = options
        self.delay = delay
        self.leak_every = leak_every
        self.calls: list[tuple[list[str], object]] = []

    def generate(self, prompts, params, progress=False):
        self.calls.append((list(prompts), params))
        time.sleep(self.delay)
        out = []
        for i, prompt in enumerate(prompts):
            row = []
            for j in range(params.n):
                if prompt.endswith(ANSWER_PREFIX):
                    m = re.findall(r"leads to (\S+?)\.", prompt)
                    text = f" {m[-1]}." if m else " unclear"
                else:
                    r = _h(params.seed, i, j, prompt)
                    hint = HINT_RE.search(prompt)
                    lead = self.options[r % len(self.options)]
                    stated = hint.group(1) if hint and r % 3 else self.options[(r >> 4) % len(self.options)]
                    leak = (
                        "As given, the answer is right. "
                        if self.leak_every and r % self.leak_every == 0
                        else ""
                    )
                    text = f"Step {r % 97}: {leak}the reasoning leads to {lead}. The answer is {stated}."
                row.append(
                    Completion(text=text, token_ids=list(range(len(text) // 4 + 1)), finish_reason="eos")
                )
            out.append(row)
        return out


def tiny_tokenizer():
    from selfmotivated.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def coin_examples(n: int) -> list[Example]:
    return [
        Example(
            id=f"coin-{i}",
            question=f"A coin is heads up. Person {i} flips it {i} times. Is it heads up?",
            gold="yes" if i % 2 == 0 else "no",
            answer_type="yes_no",
            dataset="coin",
            split="train",
        )
        for i in range(n)
    ]


def gen_config(run_dir, **kw) -> GenerateConfig:
    base = dict(
        run_dir=str(run_dir),
        model="fake",
        n_free=2,
        n_gold=1,
        n_wrong=1,
        wrong_targets=1,
        temperature=0.7,
        max_new_tokens=32,
        chunk_questions=2,
        progress=False,
    )
    base.update(kw)
    return GenerateConfig(**base)


def row(
    rid,
    kind,
    text="Some reasoning.",
    answer=None,
    forced=None,
    forced_text="",
    target="",
    leak=False,
    qid="q",
    finish_reason="eos",
):
    """A stored rationale as the store returns it (forced_text None = forcing was not run)."""
    return {
        "rid": rid,
        "question_id": qid,
        "kind": kind,
        "target": target,
        "sample_index": rid,
        "text": text,
        "answer": answer,
        "forced": forced,
        "forced_text": forced_text,
        "leak": leak,
        "fingerprint": "f",
        "finish_reason": finish_reason,
        "n_tokens": 5,
        "params": {},
    }


def question(qid="q", gold="12", answer_type="number", dataset="toy"):
    return {
        "id": qid,
        "dataset": dataset,
        "split": "train",
        "question": "How many?",
        "gold": gold,
        "answer_type": answer_type,
        "choices": (),
        "prompt": "<Q> How many? <A>",
        "messages": [{"role": "user", "content": "How many?"}],
    }


def stored_rows(run_dir) -> dict:
    con = sqlite3.connect(Path(run_dir) / "rationales.sqlite")
    try:
        rows = con.execute(
            "SELECT rid, question_id, kind, target, sample_index, text, answer, forced_text, forced, "
            "leak FROM rationales"
        ).fetchall()
    finally:
        con.close()
    return {r[1:5]: r for r in rows}


# --------------------------------------------------------------------------------------------------
# tiers, duplicates, leaks, pairs


def test_a_rationale_that_opens_with_its_answer_is_not_counted_as_checked():
    """Forcing keeps the first "The answer is 26." in the body, so it would pass by copying: the default
    model wrote 17 of CommonsenseQA's 30 top-tier rationales like this."""
    from selfmotivated.rationales.checks import opens_with_answer

    parrot = " The answer is 26.\n\n1. Step 1: 28 + 54 = 82 bales.\n2. He added 2 more bales.\n3. The answer is 26."
    reasoned = " There were 28 and now 54, so he stored 54 - 28 = 26 bales.\nThe answer is 26."
    explain_after = " The answer is 26.\nHe stored 54 - 28 = 26 bales, the new ones in the barn."
    assert opens_with_answer(parrot)
    assert not opens_with_answer(reasoned) and not opens_with_answer(explain_after)  # forcing checks these
    assert not opens_with_answer(" The answer is 26.")
    q = question(gold="26")
    gold = row(1, "gold", text=parrot, answer="26", forced="26", target="26")
    free = row(2, "free", text=parrot, answer="26", forced="26")
    assert outcome(gold, "26", "number", distrust_answer_first=True) == "inconsistent"
    assert outcome(free, "26", "number", distrust_answer_first=True) == "unsupported"
    assert outcome(gold, "26", "number") == "consistent"  # the check off
    good = row(3, "gold", text=reasoned, answer="26", forced="26", target="26")
    tiers = {r["rid"]: r["tier"] for r in rank_all({"q": q}, [gold, free, good], RankConfig())["per_question"]["q"]["all"]}
    assert tiers == {1: 2, 2: 2, 3: 3}
    tiers = {r["rid"]: r["tier"]
             for r in rank_all({"q": q}, [gold, good], RankConfig(distrust_answer_first=False))["per_question"]["q"]["all"]}
    assert tiers == {1: 3, 3: 3}


def test_outcomes_and_default_tiers_for_every_kind():
    q = question(gold="12")
    cases = [
        (row(1, "free", answer="12", forced="12"), "correct", 3),
        (row(2, "free", answer="12", forced="7"), "unsupported", 2),
        (row(3, "free", answer="12", forced=None), "unsupported", 2),  # forcing ran, no answer came out
        (row(4, "free", answer="7", forced="12"), "wrong", 1),
        (row(5, "free", answer=None, forced="12"), "no_answer", 1),
        (row(6, "gold", answer="12", forced="12", target="12"), "consistent", 3),
        (row(7, "gold", answer="12", forced="9", target="12"), "inconsistent", 2),
        (row(8, "gold", answer="9", forced="12", target="12"), "inconsistent", 2),
        (row(9, "gold", answer=None, forced="12", target="12"), "no_answer", 1),  # unfinished: 1, hinted or not
        (row(10, "wrong", answer="7", forced="7", target="7"), "consistent", 1),
        (row(11, "wrong", answer="7", forced="8", target="7"), "inconsistent", 1),
        (row(12, "wrong", answer=None, forced="8", target="7"), "no_answer", 1),
        (row(13, "wrong", answer="7", forced="12", target="7"), "reaches_gold", None),
        (row(14, "wrong", answer="12", forced="7", target="7"), "reaches_gold", None),
    ]
    for r, expected_outcome, expected_tier in cases:
        got = outcome(r, q["gold"], "number")
        assert got == expected_outcome, (r["rid"], got)
        assert DEFAULT_TIERS[f"{r['kind']}/{got}"] == expected_tier
    # "12.0" is the gold for a number question.
    assert outcome(row(15, "free", answer="12.0", forced="12"), "12", "number") == "correct"
    # Without forcing (forced_text None), or when told to ignore it, the stated answer decides.
    assert outcome(row(16, "free", answer="12", forced=None, forced_text=None), "12", "number") == "correct"
    assert (
        outcome(row(17, "gold", answer="12", forced="9", target="12"), "12", "number", False) == "consistent"
    )
    assert (
        outcome(row(18, "wrong", answer="7", forced="12", target="7"), "12", "number", False) == "consistent"
    )

    result = rank_all({"q": q}, [r for r, _, _ in cases], RankConfig(max_pairs_per_question=None))
    tiers = {r["rid"]: r["tier"] for r in result["per_question"]["q"]["all"]}
    assert tiers == {r["rid"]: t for r, _, t in cases}
    statuses = {r["rid"]: r["status"] for r in result["per_question"]["q"]["all"]}
    assert statuses[13] == statuses[14] == "excluded"


def test_a_response_with_no_answer_is_kept_as_written_and_an_empty_one_is_excluded():
    q = question(gold="12")
    rows = [
        row(1, "free", "Half of 24 is 12. The answer is 12.", "12", "12"),
        row(2, "free", "\n\nThe answer is X.", None, "12"),  # a placeholder answer line: a real bad response
        row(3, "free", "  \n", None, "12"),  # nothing at all
    ]
    result = rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=None))
    annotated = {r["rid"]: r for r in result["per_question"]["q"]["all"]}
    assert annotated[2]["status"] == "ranked" and annotated[2]["response"] == "The answer is X."
    assert annotated[3]["status"] == "excluded"
    assert [(p["chosen_id"], p["rejected_id"]) for p in result["pairs"]] == [(1, 2)]
    assert all(p["chosen"].strip() and p["rejected"].strip() for p in result["pairs"])


def test_duplicates_count_once_and_keep_the_best_copy():
    q = question(gold="12")
    rows = [
        row(1, "free", "Half of 24 is 12. The answer is 12.", "12", "12"),
        row(2, "free", "half of 24  is 12 -- The answer is 12", "12", "12"),  # same after normalising
        row(3, "free", "I am not sure. The answer is 9", "9", None),  # tier 1 copy
        row(4, "gold", "I am not sure. The answer is 9.", "9", None, target="12"),  # tier 2 copy: kept
        row(5, "free", "24 / 2 = 12. The answer is 12.", "12", "12"),
    ]
    config = RankConfig(pairs="all")
    result = rank_all({"q": q}, rows, config)["per_question"]["q"]
    assert result["n_duplicates"] == 2
    ranked = {r["rid"]: r["tier"] for r in result["ranked"]}
    assert ranked == {1: 3, 5: 3, 4: 2}
    assert {r["rid"]: r["status"] for r in result["all"]}[3] == "duplicate"
    # Duplicates make no extra pairs: 2 top x 1 tier-2 rationales.
    assert len(result["pairs"]) == 2
    stats = compute_stats({"q": q}, rank_all({"q": q}, rows, config), config)
    assert stats["n_duplicates_skipped"] == 2 and stats["tiers"] == {"3": 2, "2": 1}


def test_leaks_are_filtered_when_asked_and_counted_always():
    q = question(gold="12")
    rows = [
        row(1, "free", "6 + 6 = 12. The answer is 12.", "12", "12"),
        row(2, "gold", "As given, the answer is 12. The answer is 12.", "12", "12", target="12", leak=True),
        row(3, "wrong", "7 things. The answer is 7.", "7", "7", target="7"),
        row(4, "wrong", "We are told the answer is 7. The answer is 7.", "7", "7", target="7", leak=True),
    ]
    on = rank_all({"q": q}, rows, RankConfig(filter_leaks=True, pairs="all"))
    off = rank_all({"q": q}, rows, RankConfig(filter_leaks=False, pairs="all"))
    assert [r["rid"] for r in on["per_question"]["q"]["ranked"]] == [1, 3]
    assert sorted(r["rid"] for r in off["per_question"]["q"]["ranked"]) == [1, 2, 3, 4]
    stats = compute_stats({"q": q}, on, RankConfig())
    assert stats["n_leaks"] == 2 and stats["leak_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["n_leaks_filtered"] == 2 and stats["leaks_filtered"] is True
    assert stats["n_pairs"] == 1


def test_leak_patterns_and_answer_line():
    assert detect_leak("As given, the answer is (C) tent.")
    assert detect_leak("we are told that the answer is 5, so")
    assert detect_leak("The answer provided is yes.")
    assert detect_leak("I explain the reasoning that leads to this answer.")
    assert not detect_leak("There are 5 apples. The correct answer is 5.")
    assert not detect_leak("As given in the problem, John has 3 apples. The answer is 3.")
    body, line = split_answer_line("2 + 2 = 4.\nSo the answer is 4.\nQ: Next question?")
    assert (body, line) == ("2 + 2 = 4.", "So the answer is 4.")
    assert split_answer_line("The answer is 5. Wait, the answer is 6.") == (
        "The answer is 5. Wait",
        "the answer is 6.",
    )
    assert split_answer_line("The answer is C.\nBecause tents are for camping.") == (
        "Because tents are for camping.",
        "The answer is C.",
    )
    assert split_answer_line("no final line here") == ("no final line here", "")


def test_pairs_every_higher_lower_pair_no_ties_seeded_cap():
    q = question(gold="12")
    rows = [
        row(1, "free", "a 12", "12", "12"),
        row(2, "gold", "b 12", "12", "12", target="12"),
        row(3, "gold", "c", "9", "9", target="12"),
        row(4, "free", "d", "9", "9"),
        row(5, "wrong", "e", "7", "7", target="7"),
    ]
    full = rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=None, pairs="all"))
    pairs = {(p["chosen_id"], p["rejected_id"]) for p in full["pairs"]}
    # tiers 3,3,2,1,1: 2*1 + 2*2 + 1*2 = 8 pairs; none between equal tiers.
    assert pairs == {(1, 3), (2, 3), (1, 4), (1, 5), (2, 4), (2, 5), (3, 4), (3, 5)}
    assert all(p["chosen_tier"] > p["rejected_tier"] for p in full["pairs"])
    assert (
        full["pairs"][0]["chosen"].endswith("The answer is 12.") and full["pairs"][0]["prompt"] == q["prompt"]
    )
    capped = [
        rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=3, pair_seed=s, pairs="all"))["pairs"]
        for s in (0, 0, 1)
    ]
    ids = [[(p["chosen_id"], p["rejected_id"]) for p in c] for c in capped]
    assert len(ids[0]) == 3 and set(ids[0]) <= pairs and ids[0] == ids[1]
    stats = compute_stats(
        {"q": q},
        rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=3, pairs="all")),
        RankConfig(max_pairs_per_question=3, pairs="all"),
    )
    assert stats["n_pairs"] == 3 and stats["n_pairs_uncapped"] == 8


def test_default_pairs_never_separate_free_from_hinted_rationales():
    q = question(gold="12")
    rows = [
        row(1, "free", "6 + 6 = 12. The answer is 12.", "12", "12"),
        row(2, "gold", "b 12", "12", "12", target="12"),
        row(3, "gold", "c", "9", "9", target="12"),
        row(4, "free", "6 + 7 = 13. The answer is 13.", "13", "13"),
        row(5, "wrong", "e", "7", "7", target="7"),
        row(6, "free", "6 + 6 = 11 and then", None, None, finish_reason="length"),
        row(7, "free", "6 + 6 = 12. Yes. The answer is 12.", "12", "12"),
    ]
    default = rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=None))["pairs"]
    kinds = {p["pair_type"] for p in default}
    assert kinds == {"free>free", "gold>gold", "gold>wrong"}
    assert {(p["chosen_id"], p["rejected_id"]) for p in default if p["pair_type"] == "free>free"} == {
        (1, 4), (1, 6), (7, 4), (7, 6)}
    # Unfinished text (cut off with no answer) is scored without EOS; the rest as finished.
    cut = [p for p in default if p["rejected_id"] == 6]
    assert cut and all(not p["rejected_finished"] and p["chosen_finished"] for p in cut)
    free = rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=None, pairs="free"))["pairs"]
    assert {p["pair_type"] for p in free} == {"free>free"}
    # Under a cap, free-vs-free pairs are kept first.
    capped = rank_all({"q": q}, rows, RankConfig(max_pairs_per_question=4))["pairs"]
    assert [p["pair_type"] for p in capped] == ["free>free"] * 4
    with pytest.raises(ValueError, match="pairs must be one of"):
        RankConfig(pairs="some")


def test_tier_rules_override_and_sft_set():
    q = question(gold="12")
    rows = [
        row(1, "free", "A dozen is twelve eggs. The answer is 12.", "12", "9"),  # unsupported
        row(2, "wrong", "Seven. The answer is 7.", "7", "12", target="7"),  # reaches_gold
        row(3, "free", "Nine. The answer is 9.", "9", "9"),
    ]
    default = rank_all({"q": q}, rows, RankConfig())
    assert default["sft"] == [] and {r["rid"]: r["tier"] for r in default["per_question"]["q"]["all"]} == {
        1: 2,
        2: None,
        3: 1,
    }
    for rules in (
        "free/unsupported=3, wrong/reaches_gold=1",
        '{"free/unsupported": 3, "wrong/reaches_gold": 1}',
        str({"free/unsupported": 3, "wrong:reaches_gold": "1"}),
    ):
        custom = rank_all({"q": q}, rows, RankConfig(tier_rules=rules))
        assert {r["rid"]: r["tier"] for r in custom["per_question"]["q"]["all"]} == {1: 3, 2: 1, 3: 1}
    custom = rank_all({"q": q}, rows, RankConfig(tier_rules="free/unsupported=3"))
    (sft,) = custom["sft"]
    # The plain-text prompt "<Q> How many? <A>" is continued after a space; the chat message has none.
    assert sft["response"] == " A dozen is twelve eggs. The answer is 12." and sft["prompt"] == q["prompt"]
    assert sft["messages"][-1] == {"role": "assistant", "content": "A dozen is twelve eggs. The answer is 12."}
    assert parse_tier_rules("wrong/consistent=none")["wrong/consistent"] is None
    assert parse_tier_rules(None) == DEFAULT_TIERS


def test_sft_set_leaves_out_answer_only_rationales():
    q = question(gold="12")
    rows = [
        row(1, "free", "The answer is 12.", "12", "12"),  # no reasoning at all
        row(2, "free", "Twelve. The answer is 12.", "12", "12"),  # one word of it
        row(3, "free", "Half of 24 eggs is 12 eggs. The answer is 12.", "12", "12"),
    ]
    default = rank_all({"q": q}, rows, RankConfig())
    assert [r["rationale_id"] for r in default["sft"]] == [3]
    assert [r["rationale_id"] for r in default["per_question"]["q"]["sft"]] == [3]
    # Still ranked and paired: only the SFT set is filtered.
    assert {r["rid"]: r["tier"] for r in default["per_question"]["q"]["all"]} == {1: 3, 2: 3, 3: 3}
    everything = rank_all({"q": q}, rows, RankConfig(sft_min_body_words=0))
    assert sorted(r["rationale_id"] for r in everything["sft"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="sft_min_body_words"):
        RankConfig(sft_min_body_words=-1)


def test_sft_balance_answers_evens_out_yes_and_no():
    reasoning = "The coin was flipped twice so it is back where it started."
    questions, rows, rid = {}, [], 0
    for i, gold in enumerate(["yes"] * 6 + ["no"] * 2):
        qid = f"q{i}"
        questions[qid] = question(qid=qid, gold=gold, answer_type="yes_no")
        for take in ("First", "Second"):
            rid += 1
            rows.append(row(rid, "free", f"{take} try. {reasoning} The answer is {gold}.", gold, gold, qid=qid))
    plain = rank_all(questions, rows, RankConfig())
    assert Counter(r["gold"] for r in plain["sft"]) == {"yes": 12, "no": 4}
    balanced = [rank_all(questions, rows, RankConfig(sft_balance_answers=True, pair_seed=s)) for s in (0, 0, 1)]
    assert Counter(r["gold"] for r in balanced[0]["sft"]) == {"yes": 4, "no": 4}
    assert balanced[0]["sft"] == balanced[1]["sft"]  # seeded
    assert balanced[0]["sft"] != balanced[2]["sft"]
    per_question = sum(len(res["sft"]) for res in balanced[0]["per_question"].values())
    assert per_question == 8 and len(balanced[0]["pairs"]) == len(plain["pairs"])
    # Numbers are not categorical: nothing to balance.
    numbers = {"a": question(qid="a", gold="3"), "b": question(qid="b", gold="4")}
    number_rows = [row(1, "free", f"{reasoning} The answer is 3.", "3", "3", qid="a"),
                   row(2, "free", f"So: {reasoning} The answer is 3.", "3", "3", qid="a"),
                   row(3, "free", f"{reasoning} The answer is 4.", "4", "4", qid="b")]
    assert len(rank_all(numbers, number_rows, RankConfig(sft_balance_answers=True))["sft"]) == 3


# --------------------------------------------------------------------------------------------------
# wrong answers


def test_wrong_answers_per_type_never_gold_and_seeded():
    number = Example("n1", "How many?", "43", "number")
    for seed in range(20):
        got = choose_wrong_answers(number, 4, "synthetic", seed)
        assert len(got) == 4 and len(set(got)) == 4 and "43" not in got
        assert all(float(x) >= 0 for x in got)
        assert got == choose_wrong_answers(number, 4, "synthetic", seed)
    assert len({tuple(choose_wrong_answers(number, 3, "synthetic", s)) for s in range(10)}) > 1
    assert "0" not in choose_wrong_answers(Example("n0", "?", "0", "number"), 5, "synthetic")
    assert all(0 <= int(x) <= 100 and x != "43" for x in choose_wrong_answers(number, 50, "random_0_100", 1))

    choice = Example("c1", "Where?", "C", "choice", ("house", "car", "tent", "boat"))
    got = choose_wrong_answers(choice, 5, "auto", 0)
    assert sorted(got) == ["A", "B", "D"]
    assert choose_wrong_answers(Example("y", "?", "yes", "yes_no"), 3) == ["no"]
    assert choose_wrong_answers(Example("y", "?", "no", "yes_no"), 3) == ["yes"]
    text = Example("t", "?", "yaeA", "text")
    for seed in range(10):
        for w in choose_wrong_answers(text, 3, "auto", seed):
            assert w != "yaeA" and w.lower() != "yaea" and len(w) == 4
            assert sum(a != b for a, b in zip(w, "yaeA")) == 1

    # The model's own wrong free answers come first, most frequent first; the gold and invalid ones never.
    own = ["12", "43", None, "7", "7", "12", "7", "43.0"]
    assert choose_wrong_answers(number, 3, "auto", 0, own)[:2] == ["7", "12"]
    assert choose_wrong_answers(number, 3, "own", 0, ["43"]) == []
    assert choose_wrong_answers(choice, 2, "own", 0, ["Z", "C", "B"]) == ["B"]
    assert choose_wrong_answers(number, 3, "synthetic", 0, own) == choose_wrong_answers(
        number, 3, "synthetic", 0
    )
    with pytest.raises(ValueError, match="wrong_strategy"):
        choose_wrong_answers(number, 1, "nonsense")


# --------------------------------------------------------------------------------------------------
# generation with a fake generator: consistency by answer forcing, hints, stats, show


def test_generate_checks_consistency_by_forcing(tmp_path):
    tok = tiny_tokenizer()
    fake = FakeGenerator()
    examples = coin_examples(4)
    summary = run_generate(
        gen_config(tmp_path / "run", n_free=2, n_gold=2, n_wrong=1, wrong_targets=1),
        tokenizer=tok,
        generator=fake,
        examples=examples,
    )
    assert summary["n_new_rationales"] == 4 * (2 + 2 + 1)

    sampling = [(p, params) for p, params in fake.calls if params.temperature > 0]
    forcing = [(p, params) for p, params in fake.calls if params.temperature == 0]
    assert len(sampling) == len(forcing) == 2 * 3  # 2 chunks x (free, gold, wrong)
    for prompts, params in forcing:
        assert params.max_new_tokens == 16 and params.stop == ("\n",)
        for p in prompts:
            assert p.endswith(ANSWER_PREFIX) and not HINT_RE.search(p)  # the hint is gone
            assert "Think step by step. Then finish" in p  # the unhinted evaluation prompt
    hinted = [p for prompts, _ in sampling for p in prompts if HINT_RE.search(p)]
    assert {HINT_RE.search(p).group(1) for p in hinted} == {"yes", "no"}

    store = RationaleStore(tmp_path / "run", readonly=True)
    rows, questions = store.rationales(), store.questions()
    store.close()
    golds = {q: v["gold"] for q, v in questions.items()}
    seen_inconsistent = seen_consistent = False
    for r in rows:
        lead = re.search(r"leads to (\w+)\.", r["text"]).group(1)
        stated = re.search(r"The answer is (\w+)\.$", r["text"]).group(1)
        assert r["forced"] == lead and r["answer"] == stated
        if r["kind"] == "gold":
            got = outcome(r, golds[r["question_id"]], "yes_no")
            assert got == ("consistent" if lead == stated == golds[r["question_id"]] else "inconsistent")
            seen_inconsistent |= got == "inconsistent" and stated == golds[r["question_id"]]
            seen_consistent |= got == "consistent"
        if r["kind"] == "wrong":
            assert r["target"] != golds[r["question_id"]]
    # Both cases occur: stated gold with reasoning leading elsewhere is caught only by forcing.
    assert seen_inconsistent and seen_consistent

    # Without forcing no forcing call is made and nothing is forced.
    fake2 = FakeGenerator()
    run_generate(
        gen_config(tmp_path / "run2", answer_forcing=False), tokenizer=tok, generator=fake2, examples=examples
    )
    assert all(params.temperature > 0 for _, params in fake2.calls)
    assert all(r[7] is None for r in stored_rows(tmp_path / "run2").values())


class MidwayStatementGenerator(FakeGenerator):
    """Rationales that state their answer mid-way and again at the end. Forcing copies an answer stated in
    the text it continues, as the real model does, else names where the reasoning leads."""

    def generate(self, prompts, params, progress=False):
        if not all(p.endswith(ANSWER_PREFIX) for p in prompts):
            def twice(text):  # "... The answer is B." -> "... The answer is B. Here is why. The answer is B."
                stated = re.search(r"The answer is (\S+?)\.$", text).group(1)
                return f"{text} Here is why. The answer is {stated}."

            return [[Completion(twice(c.text), c.token_ids, c.finish_reason) for c in row]
                    for row in super().generate(prompts, params, progress)]
        self.calls.append((list(prompts), params))
        answers = []
        for p in prompts:
            stated = re.findall(r"The answer is (\w+)\.", p)
            lead = re.findall(r"leads to (\S+?)\.", p)
            answers.append([Completion(f" {stated[-1] if stated else lead[-1]}.", [0], "eos")])
        return answers


@pytest.mark.parametrize("forcing_from", ["first_answer", "last_line"])
def test_forcing_cuts_before_the_first_answer_statement(tmp_path, forcing_from):
    """A rationale "... leads to A. The answer is B. Here is why. The answer is B." must be forced from
    before its first statement (the continuation then says A); cut at its last, it copies B."""
    assert reasoning_before_answer("x leads to no. The answer is yes. Here is why. The answer is yes.") == \
        "x leads to no."
    assert reasoning_before_answer("No statement here.") == "No statement here."
    assert reasoning_before_answer("2 + 2 = 4.\nQ: next? The answer is 5.") == "2 + 2 = 4."
    fake = MidwayStatementGenerator()
    run_generate(gen_config(tmp_path / "run", n_free=2, n_gold=2, n_wrong=1, forcing_from=forcing_from),
                 tokenizer=tiny_tokenizer(), generator=fake, examples=coin_examples(4))
    store = RationaleStore(tmp_path / "run", readonly=True)
    rows = store.rationales()
    store.close()
    assert rows and all(r["text"].count("The answer is") == 2 for r in rows)
    for r in rows:
        lead = re.search(r"leads to (\w+)\.", r["text"]).group(1)
        stated = re.search(r"The answer is (\w+)\.$", r["text"]).group(1)
        assert r["forced"] == (lead if forcing_from == "first_answer" else stated)


def test_choice_hint_names_the_option_and_wrong_targets_come_from_own_answers(tmp_path):
    tok = tiny_tokenizer()
    ex = Example(
        "cq-1",
        "Where do you sleep when camping?",
        "C",
        "choice",
        ("house", "car", "tent"),
        dataset="toy_choice",
        split="train",
    )
    fake = FakeGenerator(options=("A", "B", "C"))
    run_generate(
        gen_config(tmp_path / "run", n_free=4, n_gold=1, n_wrong=1, wrong_targets=1, chunk_questions=1),
        tokenizer=tok,
        generator=fake,
        examples=[ex],
    )
    hints = [HINT_RE.search(p).group(1) for prompts, _ in fake.calls for p in prompts if HINT_RE.search(p)]
    assert hints[0] == "(C) tent"
    rows = stored_rows(tmp_path / "run")
    free_wrong = [r[6] for k, r in rows.items() if k[1] == "free" and r[6] not in (None, "C")]
    (wrong_target,) = [k[2] for k in rows if k[1] == "wrong"]
    assert hints[1] == f"({wrong_target}) {ex.choices['ABC'.index(wrong_target)]}"
    if free_wrong:  # auto: the model's own most frequent wrong answer is rationalised
        assert wrong_target == max(set(free_wrong), key=lambda a: (free_wrong.count(a), -free_wrong.index(a)))


def test_stats_show_and_mixed_settings(tmp_path):
    tok = tiny_tokenizer()
    run = tmp_path / "run"
    run_generate(
        gen_config(run, n_free=3, n_gold=2, n_wrong=1),
        tokenizer=tok,
        generator=FakeGenerator(leak_every=4),
        examples=coin_examples(6),
    )
    stats = rationale_stats(run)
    assert stats["n_rationales"] == 6 * 6 and stats["n_questions"] == 6
    assert set(stats["tiers"]) <= {"3", "2", "1"}
    assert (
        sum(stats["tiers"].values())
        + stats["n_duplicates_skipped"]
        + stats["n_excluded"]
        + stats["n_leaks_filtered"]
        == 36
    )
    assert stats["n_leaks"] > 0 and stats["by_dataset"]["coin"]["n_questions"] == 6
    assert stats["n_pairs"] == len(load_pairs(run)) and stats["n_sft"] == len(load_sft_set(run))
    assert stats["settings"][0]["temperature"] == 0.7 and stats["length_unit"] == "words"
    table = format_stats(stats)
    assert "coin" in table and "tier 3" in table and "leak rate" in table

    # Rank settings apply at read time: no filtering keeps the leaked rationales.
    assert rationale_stats(run, RankConfig(filter_leaks=False))["n_leaks_filtered"] == 0

    text = show_question(run, "coin-1")
    assert "gold: no" in text and text.count("\n[") == 6 and "free #2" in text and "forced" in text
    with pytest.raises(ValueError, match="coin-99"):
        show_question(run, "coin-99")

    # Another temperature into the same folder is refused, naming the setting, unless mixing is allowed.
    with pytest.raises(ValueError, match="temperature"):
        run_generate(
            gen_config(run, n_free=3, n_gold=2, n_wrong=1, temperature=0.9),
            tokenizer=tok,
            generator=FakeGenerator(),
            examples=coin_examples(6),
        )
    run_generate(
        gen_config(run, n_free=3, n_gold=2, n_wrong=1, temperature=0.9, allow_mixed_settings=True),
        tokenizer=tok,
        generator=FakeGenerator(),
        examples=coin_examples(6),
    )
    assert rationale_stats(run)["n_rationales"] == 72 and len(rationale_stats(run)["settings"]) == 2


# --------------------------------------------------------------------------------------------------
# resume after a real kill

_CHILD = """
import sys
from tests.test_rationales import FakeGenerator, coin_examples, gen_config, tiny_tokenizer
from selfmotivated.rationales import run_generate
run_generate(gen_config(sys.argv[1], n_free=2, n_gold=1, n_wrong=1, wrong_targets=2, chunk_questions=1),
             tokenizer=tiny_tokenizer(), generator=FakeGenerator(delay=0.15), examples=coin_examples(8))
"""
_KILL_CONFIG = dict(n_free=2, n_gold=1, n_wrong=1, wrong_targets=2, chunk_questions=1)


def _count(run_dir) -> int:
    try:
        con = sqlite3.connect(Path(run_dir) / "rationales.sqlite", timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM rationales").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_resume_after_sigkill_loses_nothing_and_duplicates_nothing(tmp_path):
    total = 8 * (2 + 1 + 1)  # yes/no questions have one wrong answer, whatever wrong_targets says
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(killed)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while _count(killed) < 12:
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "child wrote no rows in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = stored_rows(killed)
    assert 12 <= len(before) < total, "the kill must land mid-run"

    tok = tiny_tokenizer()
    resumed = run_generate(
        gen_config(killed, **_KILL_CONFIG),
        tokenizer=tok,
        generator=FakeGenerator(),
        examples=coin_examples(8),
    )
    after = stored_rows(killed)
    for key, r in before.items():  # nothing written before the kill was lost or rewritten
        assert after[key] == r
    con = sqlite3.connect(killed / "rationales.sqlite")
    assert con.execute("SELECT COUNT(*) FROM rationales").fetchone()[0] == len(after) == total
    con.close()

    fresh = tmp_path / "fresh"
    full = run_generate(
        gen_config(fresh, **_KILL_CONFIG), tokenizer=tok, generator=FakeGenerator(), examples=coin_examples(8)
    )
    strip = lambda rows: {k: v[1:] for k, v in rows.items()}  # noqa: E731  (row ids differ)
    assert strip(after) == strip(stored_rows(fresh))
    assert resumed["generate_calls"] < full["generate_calls"]  # finished phases were not redone

    # A finished folder: nothing to do, and no generator is even made.
    again = run_generate(
        gen_config(fresh, **_KILL_CONFIG), tokenizer=tok, generator=None, examples=coin_examples(8)
    )
    assert again["n_new_rationales"] == 0 and again["generate_calls"] == 0


# --------------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_export_round_trip(tmp_path, fmt):
    run = tmp_path / "run"
    run_generate(
        gen_config(run, n_free=3, n_gold=2, n_wrong=2),
        tokenizer=tiny_tokenizer(),
        generator=FakeGenerator(),
        examples=coin_examples(5),
    )
    summary = export(run, tmp_path / "out", fmt=fmt)
    sft, pairs = load_sft_set(run), load_pairs(run)
    assert sft and pairs and summary["n_sft"] == len(sft) and summary["n_pairs"] == len(pairs)
    assert load_sft_set(tmp_path / "out") == sft
    assert load_pairs(tmp_path / "out") == pairs
    for r in sft:
        assert r["tier"] == 3 and r["response"].endswith(f"The answer is {r['gold']}.")
        # Joined to the prompt (which ends in the reply's opening cue) by exactly one space.
        assert r["prompt"].endswith("step by step.") and r["response"].startswith(" ")
        assert not r["response"].startswith("  ")
        assert r["messages"][-1]["content"] == "Let's think step by step." + r["response"]
        assert r["prompt"].startswith("<|im_start|>user") and "Think step by step" in r["prompt"]
    for p in pairs:
        assert p["chosen_tier"] > p["rejected_tier"] and p["question_id"].startswith("coin-")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["n_pairs"] == len(pairs)
    if fmt == "jsonl":
        lines = (tmp_path / "out" / "rationales.jsonl").read_text().splitlines()
        assert len(lines) == 5 * (3 + 2 + 2) and {"outcome", "tier", "status"} <= set(json.loads(lines[0]))
    else:
        from datasets import load_from_disk

        assert len(load_from_disk(str(tmp_path / "out" / "rationales"))) == 5 * 7
    # A stricter rank config changes the export without regenerating.
    strict = export(run, tmp_path / "strict", fmt=fmt, rank_config=RankConfig(max_pairs_per_question=1))
    assert strict["n_pairs"] <= 5 and strict["n_pairs"] < summary["n_pairs"]


# --------------------------------------------------------------------------------------------------
# bad settings


def test_bad_settings_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no rationales to generate"):
        GenerateConfig(run_dir="x", n_free=0, n_gold=0, n_wrong=3, wrong_targets=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        GenerateConfig(run_dir="x", temperature=-0.1)
    with pytest.raises(ValueError, match="greedy"):
        GenerateConfig(run_dir="x", temperature=0, n_free=4)
    with pytest.raises(ValueError, match="n_gold must be >= 0"):
        GenerateConfig(run_dir="x", n_gold=-1)
    with pytest.raises(ValueError, match="top_p"):
        GenerateConfig(run_dir="x", top_p=0)
    with pytest.raises(ValueError, match="wrong_strategy"):
        GenerateConfig(run_dir="x", wrong_strategy="nearby")
    with pytest.raises(ValueError, match="n_free is 0"):
        GenerateConfig(run_dir="x", wrong_strategy="own", n_free=0)
    with pytest.raises(ValueError, match="prompt must be"):
        GenerateConfig(run_dir="x", prompt="three_shot")
    with pytest.raises(ValueError, match="forcing_from must be one of"):
        GenerateConfig(run_dir="x", forcing_from="middle")
    with pytest.raises(ValueError, match="unknown kind 'hinted'"):
        RankConfig(tier_rules="hinted/consistent=3")
    with pytest.raises(ValueError, match="unknown outcome 'lucky'"):
        RankConfig(tier_rules="free/lucky=3")
    with pytest.raises(ValueError, match="must be an integer"):
        RankConfig(tier_rules="free/correct=high")
    with pytest.raises(ValueError, match="kind/outcome=tier"):
        RankConfig(tier_rules="free/correct")
    with pytest.raises(ValueError, match="max_pairs_per_question"):
        RankConfig(max_pairs_per_question=-1)
    with pytest.raises(ValueError, match="run folder"):
        run_generate(
            GenerateConfig(), tokenizer=tiny_tokenizer(), generator=FakeGenerator(), examples=coin_examples(1)
        )
    with pytest.raises(ValueError, match="more than once"):
        run_generate(
            gen_config(tmp_path / "dup"),
            tokenizer=tiny_tokenizer(),
            generator=FakeGenerator(),
            examples=coin_examples(2) + coin_examples(1),
        )
    with pytest.raises(FileNotFoundError, match="no rationale store"):
        rationale_stats(tmp_path / "nothing")
    run_generate(
        gen_config(tmp_path / "run"),
        tokenizer=tiny_tokenizer(),
        generator=FakeGenerator(),
        examples=coin_examples(1),
    )
    with pytest.raises(ValueError, match="export format"):
        export(tmp_path / "run", tmp_path / "out", fmt="csv")
    changed = [Example("coin-0", "Another question?", "no", "yes_no", dataset="coin", split="train")]
    with pytest.raises(ValueError, match="data changed"):
        run_generate(
            gen_config(tmp_path / "run"),
            tokenizer=tiny_tokenizer(),
            generator=FakeGenerator(),
            examples=changed,
        )


# --------------------------------------------------------------------------------------------------
# end to end on the tiny random model


@pytest.mark.slow
def test_end_to_end_tiny_random_model(tmp_path):
    """The real path: data loading, prompts, `make_generator` (default engine backend), checks, store;
    and the backend's samples are reproducible per call, which exact resumption relies on."""
    from selfmotivated.data import DataConfig
    from selfmotivated.tiny import build_tiny_model

    model, tok = build_tiny_model()
    config = gen_config(
        tmp_path / "run",
        n_free=1,
        n_gold=1,
        n_wrong=1,
        max_new_tokens=8,
        forcing_max_new_tokens=4,
        model="tiny-random",
        data=DataConfig(dataset="synthetic_coin_flip", split="train", limit=2, n_train=4, n_test=2),
    )
    summary = run_generate(config, model=model, tokenizer=tok)
    assert summary["n_new_rationales"] == 2 * 3 and summary["generate_calls"] == 6
    store = RationaleStore(tmp_path / "run", readonly=True)
    rows = store.rationales()
    store.close()
    assert len(rows) == 6 and all(r["forced_text"] is not None and r["n_tokens"] <= 8 for r in rows)
    assert {r["kind"] for r in rows} == {"free", "gold", "wrong"}
    stats = rationale_stats(tmp_path / "run")
    assert stats["n_rationales"] == 6 and stats["n_questions"] == 2
    export(tmp_path / "run", tmp_path / "out")
    assert (tmp_path / "out" / "rationales.jsonl").read_text().count("\n") == 6

    # Lose one prompt's rows (as a kill would): the rerun redoes that phase and writes the same samples.
    before = stored_rows(tmp_path / "run")
    con = sqlite3.connect(tmp_path / "run" / "rationales.sqlite")
    with con:
        con.execute("DELETE FROM rationales WHERE kind='gold' AND question_id=?", (rows[0]["question_id"],))
    con.close()
    again = run_generate(config, model=model, tokenizer=tok)
    assert again["n_new_rationales"] == 1 and again["generate_calls"] == 2
    after = stored_rows(tmp_path / "run")
    assert {k: v[1:] for k, v in after.items()} == {k: v[1:] for k, v in before.items()}
