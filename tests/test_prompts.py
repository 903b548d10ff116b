import json

import pytest

from selfmotivated.prompts import (
    build_messages,
    build_prompt,
    format_question,
    load_exemplars,
    load_templates,
    parse_plain_exemplars,
    stop_strings,
)
from selfmotivated.records import Example

CHOICE = Example(id="q1", question="Where is milk kept?", gold="B", answer_type="choice",
                 choices=("oven", "fridge", "garden"), dataset="toy")
NUMBER = Example(id="q2", question="What is 2 + 3?", gold="5", answer_type="number", dataset="toy")


class PlainTokenizer:
    """A tokenizer without a chat template and without BOS."""
    chat_template = None
    bos_token = None


def test_choices_are_lettered_in_order():
    assert format_question(CHOICE) == "Where is milk kept?\nAnswer choices: (A) oven, (B) fridge, (C) garden."


def test_zero_shot_asks_for_the_answer_line(tiny):
    _, tokenizer = tiny
    text = build_prompt(NUMBER, tokenizer)
    assert text.startswith("<|im_start|>user\nWhat is 2 + 3?")
    # No placeholder the model could copy: with '"The answer is X.", where X is ...' the default model
    # ended 113 of 150 Last Letter answers with "The answer is X.".
    assert 'starts with "The answer is" and gives a number' in text and "X" not in text
    # The reply opens with a cue to reason; an empty response_start removes it.
    assert text.endswith("<|im_start|>assistant\nLet's think step by step.")
    templates = {**load_templates(), "response_start": ""}
    assert build_prompt(NUMBER, tokenizer, templates=templates).endswith("<|im_start|>assistant\n")
    hinted = build_prompt(NUMBER, tokenizer, hint="5")
    assert hinted.endswith("<|im_start|>assistant\nLet's think step by step.")


def test_few_shot_chat_uses_turns(tiny):
    _, tokenizer = tiny
    text = build_prompt(NUMBER, tokenizer, style="few_shot", num_exemplars=2)
    assert text.count("<|im_start|>assistant\n") == 3  # two exemplar answers + the generation cue
    assert text.count("The answer is 8.") == 1  # first exemplar's answer line
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_plain_text_few_shot_and_stop():
    pairs = [("What is 1 + 1?", "1 + 1 = 2. The answer is 2.")]
    text = build_prompt(NUMBER, PlainTokenizer(), style="few_shot", exemplars=pairs)
    assert text == "Q: What is 1 + 1?\nA: 1 + 1 = 2. The answer is 2.\nQ: What is 2 + 3?\nA:"
    assert stop_strings(PlainTokenizer()) == ("\nQ:",)


def test_hint_prompt_states_answer(tiny):
    _, tokenizer = tiny
    text = build_prompt(CHOICE, tokenizer, hint="B")
    assert "The answer is B." in text and "Answer choices: (A) oven" in text


def test_parse_shared_prompt_file(data_dir):
    table = json.loads((data_dir / "prompts" / "few_shot_cot_prompts.json").read_text())
    pairs = parse_plain_exemplars(table["coin_flip"]["prompt"])
    assert len(pairs) == 8
    assert all(a.endswith(("The answer is yes.", "The answer is no.")) for _, a in pairs)
    pairs = parse_plain_exemplars(table["gsm8k"]["prompt"])
    assert len(pairs) == 8 and pairs[0][1].endswith("The answer is 6.")


def test_our_exemplars_end_with_answer_line():
    from selfmotivated.answers import extract_answer

    for answer_type in ("number", "choice", "yes_no", "text"):
        ex = Example(id="x", question="?", gold="", answer_type=answer_type)
        pairs = load_exemplars(None, ex)
        assert len(pairs) >= 3
        for question, answer in pairs:
            assert "The answer is" in answer
            choices = ()
            if answer_type == "choice":
                from selfmotivated.answers import parse_choices_from_question
                choices = parse_choices_from_question(question)
            assert extract_answer(answer, answer_type, choices) is not None, answer


def test_exemplar_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_exemplars(str(tmp_path / "missing.json"), NUMBER)
    bad = tmp_path / "ex.json"
    bad.write_text(json.dumps({"choice": [{"question": "q", "answer": "a"}]}))
    with pytest.raises(ValueError, match="no exemplars for dataset 'toy' or answer type 'number'"):
        load_exemplars(str(bad), NUMBER)


def test_user_templates_override_and_validate(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"zero_shot": "Solve: {question}"}))
    templates = load_templates(str(path))
    assert build_messages(NUMBER, templates=templates)[0]["content"] == "Solve: What is 2 + 3?"
    path.write_text(json.dumps({"zero_shoot": "x"}))
    with pytest.raises(ValueError, match="unknown template keys"):
        load_templates(str(path))


def test_templates_digest_follows_content_not_name(tmp_path):
    from selfmotivated.prompts import templates_digest

    empty, edited = tmp_path / "a.json", tmp_path / "b.json"
    empty.write_text("{}")
    edited.write_text(json.dumps({"response_start": ""}))
    assert templates_digest(str(empty)) == templates_digest(None) == templates_digest(load_templates())
    assert templates_digest(str(edited)) != templates_digest(None)
