"""Answer-edited negatives (rationales/edits.py): which texts are edited, into what, and how they join the rank."""

from selfmotivated.rationales.edits import answer_edit_pairs, edit_answer, wrong_numbers


def pair(qid, chosen, rejected, chosen_tier=3, rejected_tier=1, kind="free"):
    return {"question_id": qid, "prompt": f"{qid}?", "chosen": chosen, "rejected": rejected,
            "chosen_tier": chosen_tier, "rejected_tier": rejected_tier, "chosen_kind": kind, "rejected_kind": kind}


def test_an_edit_changes_every_standalone_occurrence_of_the_answer_and_nothing_else():
    assert edit_answer(" 18 + 26 = 44. The answer is 44.", "44", "-44") == " 18 + 26 = -44. The answer is -44."
    assert edit_answer(" 29 - 36 = -7. The answer is -7.", "-7", "7") == " 29 - 36 = 7. The answer is 7."
    # inside longer numbers (144, 3.44, 1,440) and after a minus sign the answer is another number
    assert edit_answer(" 144, 3.44, 1,440 and -44 are others. The answer is 44.", "44", "45") == \
        " 144, 3.44, 1,440 and -44 are others. The answer is 45."
    # a standalone number equal to the answer is edited wherever it stands, an operand too (documented)
    assert edit_answer(" 44 + 0 = 44. The answer is 44.", "44", "45") == " 45 + 0 = 45. The answer is 45."
    assert edit_answer(" The answer is forty-four.", "44", "45") is None


def test_wrong_numbers_cross_the_sign_first_only_when_the_golds_have_both_signs():
    signed, unsigned = wrong_numbers("44", 3, True, "s"), wrong_numbers("44", 3, False, "s")
    assert signed[0] == "-44" and len(signed) == 3 and "44" not in signed
    assert len(unsigned) == 3 and not any(w.startswith("-") for w in unsigned)
    assert wrong_numbers("-7", 1, True, "s") == ["7"]
    assert wrong_numbers("0", 2, True, "s")[0] != "0"  # no "-0"
    assert wrong_numbers("44", 3, True, "s") == signed  # seeded


def test_answer_edit_pairs_edit_each_right_response_once_below_its_original():
    rows = [pair("a", " 3 + 4 = 7. The answer is 7.", " 3 + 4 = 8. The answer is 8."),
            pair("a", " 3 + 4 = 7. The answer is 7.", " I give up."),  # the same right text: edited once
            pair("a", " Seven. The answer is 7.", " 9. The answer is 9.", kind="gold"),
            pair("b", " 2 - 9 = -7. The answer is -7.", " The answer is 7."),
            pair("c", " The answer is 2.", " The answer is 3.", chosen_tier=2),  # not the top tier of "c"
            pair("c", " 1 + 1 = 2. The answer is 2.", " The answer is 2.", chosen_tier=3, rejected_tier=2)]
    edits = answer_edit_pairs(rows, per_response=2, seed=0)
    by_text = {}
    for e in edits:
        by_text.setdefault(e["chosen"], []).append(e["rejected"])
        assert (e["chosen_tier"], e["rejected_tier"], e["rejected_kind"], e["pair_type"]) == (3, 1, "edited",
                                                                                            "right>edited")
        assert e["prompt"] == e["question_id"] + "?"
    assert set(by_text) == {" 3 + 4 = 7. The answer is 7.", " Seven. The answer is 7.",
                            " 2 - 9 = -7. The answer is -7.", " 1 + 1 = 2. The answer is 2."}
    assert all(len(v) == 2 for v in by_text.values())
    # the golds have both signs: the first edit of each crosses it
    assert by_text[" 3 + 4 = 7. The answer is 7."][0] == " 3 + 4 = -7. The answer is -7."
    assert by_text[" 2 - 9 = -7. The answer is -7."][0] == " 2 - 9 = 7. The answer is 7."
    assert next(e for e in edits if e["chosen"] == " Seven. The answer is 7.")["chosen_kind"] == "gold"
    unsigned = answer_edit_pairs(rows[:3], per_response=3, seed=0)
    assert len(unsigned) == 6 and not any("-" in e["rejected"] for e in unsigned)
    assert answer_edit_pairs(rows, per_response=0) == []
