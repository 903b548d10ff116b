"""The reward model's validity report: AUROC against the answer checker, within questions, by pair type, and
the provenance-only baseline (hand-computed figures)."""

import pytest

from selfmotivated.metrics import auroc
from selfmotivated.reward import pair_metrics
from selfmotivated.validity import validity_figures, within_question_auroc


def test_auroc_by_hand():
    assert auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.3, 0.8, 0.9], [True, True, False, False]) == 0.0
    # positives 0.5, 0.2; negatives 0.5, 0.1: pairs (0.5>0.5 tie .5) (0.5>0.1 1) (0.2<0.5 0) (0.2>0.1 1) = 2.5/4
    assert auroc([0.5, 0.2, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.625)
    assert auroc([0.5, 0.2], [True, True]) is None
    with pytest.raises(ValueError):
        auroc([0.1], [True, False])


def test_validity_figures_separate_overall_from_within_question_ranking():
    # Question a is easy (high scores), b hard (low scores): overall the score tracks the question, within
    # each question it ranks the right sample first.
    rows = [
        {"id": "a", "score": 2.0, "correct": True, "finished": True},
        {"id": "a", "score": 1.5, "correct": False, "finished": True},
        {"id": "b", "score": 0.5, "correct": True, "finished": True},
        {"id": "b", "score": 0.1, "correct": False, "finished": False},
        {"id": "c", "score": 0.3, "correct": False, "finished": True},  # no right sample: not in within-AUROC
    ]
    within, n = within_question_auroc(rows)
    assert within == 1.0 and n == 2
    figures = validity_figures(rows)
    # positives 2.0, 0.5; negatives 1.5, 0.1, 0.3: 2.0 beats all 3; 0.5 beats 0.1 and 0.3 -> 5/6
    assert figures["auroc"] == pytest.approx(5 / 6)
    assert figures["n"] == 5 and figures["n_correct"] == 2 and figures["n_questions"] == 3
    assert figures["truncated_frac"] == pytest.approx(0.2)
    assert figures["mean_score_correct"] == pytest.approx(1.25)


def test_pair_metrics_by_pair_type_and_provenance_baseline():
    rows = [  # diff: the reward model's score difference (better - worse); provenance_diff: kind order
        {"question": "q", "loss": 0.1, "diff": 1.0, "gap": 2, "better_tier": 3, "worse_tier": 1,
         "pair_type": "free>free", "provenance_diff": 0},
        {"question": "q", "loss": 0.1, "diff": -1.0, "gap": 2, "better_tier": 3, "worse_tier": 1,
         "pair_type": "free>free", "provenance_diff": 0},
        {"question": "r", "loss": 0.1, "diff": 0.5, "gap": 1, "better_tier": 2, "worse_tier": 1,
         "pair_type": "gold>wrong", "provenance_diff": 2},
    ]
    m = pair_metrics(rows, [(3, 1.0), (1, 0.0)])
    assert m["accuracy_by_pair_type"] == {"free>free": {"accuracy": 0.5, "n_pairs": 2},
                                          "gold>wrong": {"accuracy": 1.0, "n_pairs": 1}}
    # Provenance alone: ties (free vs free) count half, gold over wrong is right: (0.5 + 0.5 + 1) / 3
    assert m["provenance_baseline_accuracy"] == pytest.approx(2 / 3)


def test_within_question_interval_resamples_questions():
    from selfmotivated.validity import within_question_interval

    def question(qid, right_first):
        hi, lo = (True, False) if right_first else (False, True)
        return [{"id": qid, "score": 1.0, "correct": hi, "finished": True},
                {"id": qid, "score": 0.0, "correct": lo, "finished": True}]

    perfect = [r for i in range(10) for r in question(f"q{i}", True)]
    assert within_question_interval(perfect) == [1.0, 1.0]
    mixed = [r for i in range(40) for r in question(f"q{i}", i % 2 == 0)]  # half ordered right: 0.5
    low, high = within_question_interval(mixed)
    assert low < 0.5 < high and 0.25 < low and high < 0.75  # sd of a mean of 40 coin flips: 0.079
    assert within_question_interval(question("one", True)) is None  # one question: no interval
    assert validity_figures(mixed)["within_question_auroc_ci95"] == [low, high]


def test_two_reward_models_compared_on_the_same_samples():
    from selfmotivated.validity import compare_within_question

    def rows(order_right_first):  # 30 questions, one right and one wrong sample each, scored by a model
        out = []
        for i in range(30):
            good = order_right_first(i)
            out += [{"id": f"q{i}", "sample": 0, "text": "right", "correct": True, "score": 1.0 if good else 0.0},
                    {"id": f"q{i}", "sample": 1, "text": "wrong", "correct": False, "score": 0.0 if good else 1.0}]
        return out

    chance = rows(lambda i: i % 2 == 0)  # orders half the questions right: 0.5
    better = rows(lambda i: i % 10 != 0)  # 27 of 30: 0.9
    result = compare_within_question(chance, better)
    assert result["n_questions"] == 30 and result["a"] == 0.5 and result["b"] == 0.9
    assert result["diff"] == pytest.approx(0.4) and 0.1 < result["ci95"][0] < 0.4 < result["ci95"][1]
    other = [dict(r, text=r["text"] + "!") if r["id"] == "q3" else r for r in better]  # q3 sampled differently
    assert compare_within_question(chance, other)["n_questions_with_other_samples"] == 1


def _yes_no_rows(golds, score):
    """Two samples per question, one saying yes and one no; score(answer, right) gives the reward model's score."""
    rows = []
    for q, gold in enumerate(golds):
        for answer in ("yes", "no"):
            rows.append({"id": f"q{q}", "prediction": answer, "correct": answer == gold, "finished": True,
                         "score": score(answer, answer == gold)})
    return rows


def test_a_reward_model_that_prefers_an_answer_is_told_from_one_that_checks():
    from selfmotivated.report.validity import _habit
    from selfmotivated.validity import answer_prior_within_question_auroc, within_question_auroc_by_gold

    golds = ["no", "no", "no", "yes"]  # golds that lean to "no"
    habit = _yes_no_rows(golds, lambda answer, right: 1.0 if answer == "no" else 0.0)
    figures = validity_figures(habit)
    # Right on the three "no" questions, wrong on the "yes" one: 0.75 within a question, all of it the habit.
    assert figures["within_question_auroc"] == pytest.approx(0.75)
    assert figures["answer_prior_within_question_auroc"] == pytest.approx(0.75)
    assert figures["within_question_auroc_by_gold"] == {"no": {"auroc": 1.0, "n_questions": 3},
                                                         "yes": {"auroc": 0.0, "n_questions": 1}}
    assert "adds nothing" in _habit(figures)

    checker = _yes_no_rows(golds, lambda answer, right: 1.0 if right else 0.0)
    # Leave-one-question-out: on the "yes" question the other questions' "no" samples were all right, so the
    # answer-only scorer gets it wrong; the reward model does not.
    assert answer_prior_within_question_auroc(checker) == pytest.approx(0.75)
    assert within_question_auroc(checker)[0] == 1.0
    assert within_question_auroc_by_gold(checker) == {"no": {"auroc": 1.0, "n_questions": 3},
                                                      "yes": {"auroc": 1.0, "n_questions": 1}}
    assert _habit(validity_figures(checker)) is None

    # With enough questions on both sides, the split names the habit.
    many = _yes_no_rows(["no"] * 6 + ["yes"] * 5, lambda answer, right: 1.0 if answer == "no" else 0.0)
    assert "whatever the question" in _habit(validity_figures(many))


def test_answer_figures_skip_numbers_and_rows_without_predictions():
    from selfmotivated.validity import answer_prior_within_question_auroc, within_question_auroc_by_gold

    # Twelve questions with distinct numeric golds: no split by gold; an answer no other question states
    # falls back to the other questions' mean score (a tie here), so the answer-only scorer is at chance.
    rows = []
    for q in range(12):
        rows += [{"id": f"q{q}", "prediction": str(q), "correct": True, "score": 1.0},
                 {"id": f"q{q}", "prediction": str(100 + q), "correct": False, "score": 0.0}]
    assert within_question_auroc_by_gold(rows) is None
    assert answer_prior_within_question_auroc(rows) == pytest.approx(0.5)
    no_predictions = [{k: v for k, v in r.items() if k != "prediction"} for r in rows]
    assert answer_prior_within_question_auroc(no_predictions) is None
    assert within_question_auroc_by_gold(no_predictions) is None


def test_answer_edit_probe_tells_a_sign_liking_from_a_check():
    """Right samples of a signed numeric task, edited to the negated answer and to another wrong number: a scorer
    that likes a minus sign ranks the negated copies above the originals, a checker of the answer below."""
    from selfmotivated.records import Example
    from selfmotivated.report.validity import _habit
    from selfmotivated.validity import answer_edit_items, answer_edit_probe

    examples = [Example(id="a", question="3 + 4 =", gold="7", answer_type="number"),
                Example(id="b", question="2 - 9 =", gold="-7", answer_type="number"),
                Example(id="c", question="Is it?", gold="yes", answer_type="yes_no")]
    rows = [{"id": "a", "sample": 0, "text": " 3 + 4 = 7. The answer is 7.", "prediction": "7", "correct": True},
            {"id": "a", "sample": 1, "text": " 3 + 4 = 8. The answer is 8.", "prediction": "8", "correct": False},
            {"id": "b", "sample": 0, "text": " 2 - 9 = -7. The answer is -7.\nMore text", "prediction": "-7",
             "correct": True},
            {"id": "b", "sample": 1, "text": " It is 7 The answer is 7 and", "prediction": "7", "correct": True,
             "finished": False},  # read as PPO reads it: ends at the answer line, finished
            {"id": "c", "sample": 0, "text": " The answer is yes.", "prediction": "yes", "correct": True}]
    items = answer_edit_items(rows, examples)
    assert [(q, kind) for q, kind, _, _ in items] == [("a", "negated"), ("a", "other"), ("b", "negated"),
                                                      ("b", "other"), ("b", "negated"), ("b", "other")]
    assert items[0][2:] == ("3 + 4 = 7. The answer is 7.", "3 + 4 = -7. The answer is -7.")
    assert items[2][3] == "2 - 9 = 7.\nMore text The answer is 7."  # as the reward model reads it: answer line last

    def minus(text):
        return 1.0 if "-" in text.split("The answer is")[-1] else 0.0

    liking = answer_edit_probe(items, [minus(v) for _, _, v, _ in items], [minus(e) for *_, e in items])
    assert liking["negated"]["original_above"] == pytest.approx(1 / 3) and liking["negated"]["n"] == 3
    assert "likes the sign" in _habit({"answer_edit_probe": liking})
    check = answer_edit_probe(items, [1.0] * len(items), [0.0] * len(items))
    assert check == {"negated": {"original_above": 1.0, "n": 3}, "other": {"original_above": 1.0, "n": 3}}
    assert _habit({"answer_edit_probe": check}) is None
    assert answer_edit_items(rows[-1:], examples) == [] and answer_edit_probe([], [], []) is None
