"""Reward model (stage 3) on tiny models: grouping, scoring position, loss, learning a toy rank (and not
learning shuffled labels), LoRA + head saving and loading, bad input, best-of-N."""

import json
import random

import pytest
import torch

from selfmotivated.records import Example
from selfmotivated.reward import (
    RerankConfig, RewardConfig, best_of_n, collate_groups, group_pairs, load_reward_model, load_scoring_backbone,
    pairwise_losses, question_mean, reward_scores, run_reward, run_rerank, score_texts, tokenize_groups,
)

LEGS = {"spider": 8, "dog": 4, "bird": 2, "snake": 0, "ant": 6}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_legs_pairs(path, n=200, flip=False, seed=0):
    """Toy rank: tier-3 rationales contain the right number (an animal's legs), tier-1 ones a wrong number.
    flip=True reverses the tiers of a random half of the questions: the labels carry no signal."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            animal = list(LEGS)[i % len(LEGS)]
            right = LEGS[animal]
            flipped = flip and rng.random() < 0.5
            for wrong in rng.sample([x for x in range(10) if x != right], 2):
                good, bad = f" {right} legs.", f" {wrong} legs."
                if flipped:
                    good, bad = bad, good
                fh.write(json.dumps({"question_id": f"q{i}", "prompt": f"Q{i}: legs of a {animal}?\nA:",
                                     "chosen": good, "rejected": bad, "chosen_tier": 3, "rejected_tier": 1}) + "\n")
    return str(path)


def config(tiny_dir, tmp_path, **kw):
    values = dict(model=tiny_dir, train_file=write_legs_pairs(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out"),
                  method="full", learning_rate=4e-3, epochs=6, batch_size=8, val_fraction=0.2, save_steps=0,
                  progress=False, early_stopping_patience=0, warmup_ratio=0.0)
    values.update(kw)
    return RewardConfig(**values)


def row(qid, chosen, rejected, ct=3, rt=1, prompt="Q?"):
    return {"question_id": qid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_tier": ct,
            "rejected_tier": rt}


def test_group_pairs_dedups_responses_and_keeps_all_pairs_of_a_question_together():
    groups = group_pairs([row("a", "x", "y"), row("a", "x", "z"), row("a", "w", "y", 2, 1), row("b", "x", "y"),
                          row("a", "x", "y")])
    a, b = groups
    assert a.responses == ["x", "y", "z", "w"] and a.tiers == [3, 1, 1, 2]
    assert a.pairs == [(0, 1), (0, 2), (3, 1)]  # the repeated row counts once
    assert b.pairs == [(0, 1)]


@pytest.mark.parametrize("bad, message", [
    (row("a", "x", "y", 1, 1), "ties are not pairs"),
    (row("a", "x", "y", 1, 3), "not above"),
    (row("a", "x", "x"), "same text"),
    ({"question_id": "a", "prompt": "Q?", "chosen": "x"}, r"missing key\(s\) \['rejected'"),
    (row("a", "x", "y", "three", 1), "must be integers"),
])
def test_group_pairs_rejects_bad_rows(bad, message):
    with pytest.raises(ValueError, match=message):
        group_pairs([row("z", "p", "q"), bad])


def test_group_pairs_rejects_conflicting_tiers_and_prompts():
    with pytest.raises(ValueError, match="has tier 1 here and 3"):
        group_pairs([row("a", "x", "y"), row("a", "w", "x", 3, 1)])
    with pytest.raises(ValueError, match="two different prompts"):
        group_pairs([row("a", "x", "y"), row("a", "x", "z", prompt="Other?")])


def test_score_is_read_at_the_last_token_whatever_the_padding(tiny_dir):
    model, tok = load_scoring_backbone(tiny_dir)
    model.eval()
    short = tok("Q: hi\nA: ok.", add_special_tokens=False)["input_ids"]
    long = tok("Q: a much longer question\nA: and a longer answer.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        alone = reward_scores(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        batch = collate_groups([{"seqs": [long, short], "tiers": [0, 0], "pairs": []}], tok.pad_token_id)
        both = reward_scores(model, batch["input_ids"], batch["attention_mask"])
        # a trailing pad/EOS in the text is stripped; a finished response then gets exactly one EOS, where
        # its score is read, and one cut off at the token limit none
        cut = score_texts(model, tok, ["Q: hi\nA:"], [" ok." + tok.pad_token], finished=[False])
        ended = score_texts(model, tok, ["Q: hi\nA:"], [" ok." + tok.eos_token])
        eos = short + [tok.eos_token_id]
        at_eos = reward_scores(model, torch.tensor([eos]), torch.ones(1, len(eos), dtype=torch.long))
        # EOS as the pad token (as many tokenizers pad): still scored at the EOS, by the attention mask
        padded = collate_groups([{"seqs": [long, eos], "tiers": [0, 0], "pairs": []}], tok.eos_token_id)
        eos_pad = reward_scores(model, padded["input_ids"], padded["attention_mask"])
    assert torch.allclose(alone[0], both[1], atol=1e-5)
    assert cut[0] == pytest.approx(alone[0].item(), abs=1e-5)
    assert ended[0] == pytest.approx(at_eos[0].item(), abs=1e-5) and abs(ended[0] - cut[0]) > 1e-4
    assert torch.allclose(eos_pad[1], at_eos[0], atol=1e-5)


def test_pairwise_loss_margin_and_question_weighting():
    scores = torch.tensor([2.0, 0.0, 1.0, 5.0, 4.0])
    batch = {"better": torch.tensor([0, 0, 3]), "worse": torch.tensor([1, 2, 4]),
             "margin": torch.tensor([0.5, 0.0, 0.0]), "question": torch.tensor([0, 0, 1])}
    losses, diff = pairwise_losses(scores, batch)
    expected = -torch.nn.functional.logsigmoid(torch.tensor([2.0 - 0.5, 1.0, 1.0]))
    assert torch.allclose(losses, expected) and torch.equal(diff, torch.tensor([2.0, 1.0, 1.0]))
    # question 0 has two pairs, question 1 one: each question weighs the same (InstructGPT)
    assert torch.isclose(question_mean(losses, batch["question"], 2), ((expected[0] + expected[1]) / 2 + expected[2]) / 2)


def test_reward_model_learns_the_toy_rank(tiny_dir, tmp_path):
    metrics = run_reward(config(tiny_dir, tmp_path))
    held = metrics["heldout"]
    assert held["pairwise_accuracy"] >= 0.8
    assert metrics["heldout_start"]["pairwise_accuracy"] < 0.7  # it was not there before training
    assert held["n_questions"] == 40 and held["n_pairs"] == 80
    assert held["accuracy_by_tier_gap"]["2"]["n_pairs"] == 80
    assert held["score_by_tier"]["3"]["mean"] > held["score_by_tier"]["1"]["mean"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["data"]["train_questions"] == 160 and record["data"]["val_questions"] == 40
    # held-out questions were never trained on: the split is by question id
    assert record["data"]["train_pairs"] + record["data"]["val_pairs"] == 400


def test_reward_model_is_near_chance_on_shuffled_labels(tiny_dir, tmp_path):
    path = write_legs_pairs(tmp_path / "shuffled.jsonl", flip=True)
    metrics = run_reward(config(tiny_dir, tmp_path, train_file=path))
    assert 0.25 <= metrics["heldout"]["pairwise_accuracy"] <= 0.75


def test_lora_reward_model_trains_adapter_and_head_and_loads_back(tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = config(tiny_dir, tmp_path, method="lora", lora_r=4, learning_rate=5e-3, epochs=1, lora_dropout=0.0,
                 margin_per_tier_gap=0.5)
    metrics = run_reward(cfg)
    folder = tmp_path / "out" / "model"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    assert adapter["base_model_name_or_path"] == tiny_dir

    model, tok = load_reward_model(folder)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    base_params = dict(base.named_parameters())
    for name, p in model.named_parameters():
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" in name or "modules_to_save" in name or "original_module" in name:
            continue
        assert torch.equal(p, base_params[plain]), f"base weight {plain} changed"
    head = dict(model.named_parameters())["base_model.model.score.modules_to_save.default.weight"]
    assert not torch.equal(head, base_params["score.weight"])  # the head was trained (and saved)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())

    prompts, responses = ["Q0: legs of a spider?\nA:"] * 2, [" 8 legs.", " 3 legs."]
    ours = score_texts(model, tok, prompts, responses)
    # the documented plain-transformers way gives the same scores
    plain_tok = AutoTokenizer.from_pretrained(folder)
    plain_base = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    plain_base.config.pad_token_id = plain_tok.pad_token_id
    plain = PeftModel.from_pretrained(plain_base, str(folder)).eval()
    assert score_texts(plain, plain_tok, prompts, responses) == pytest.approx(ours, abs=1e-5)
    auto = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()  # peft integration
    auto.config.pad_token_id = plain_tok.pad_token_id
    assert score_texts(auto, plain_tok, prompts, responses) == pytest.approx(ours, abs=1e-5)
    assert metrics["model_dir"] == str(folder)

    # save_merged: a plain sequence-classification folder, same scores
    merged_cfg = config(tiny_dir, tmp_path, method="lora", lora_r=4, learning_rate=5e-3, epochs=1, lora_dropout=0.0,
                        margin_per_tier_gap=0.5, save_merged=True, resume=False)
    run_reward(merged_cfg)
    merged = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert score_texts(merged, plain_tok, prompts, responses) == pytest.approx(ours, abs=1e-4)


def test_adapter_that_does_not_match_its_backbone_is_a_clear_error(tiny_dir, tmp_path):
    from selfmotivated.tiny import build_tiny_model

    run_reward(config(tiny_dir, tmp_path, method="lora", lora_r=4, epochs=1))
    other, tok = build_tiny_model(hidden_size=32)
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    tok.save_pretrained(other_dir)
    meta_path = tmp_path / "out" / "model" / "reward_model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "backbone": str(other_dir)}))
    with pytest.raises(ValueError, match="does not match its backbone"):
        load_reward_model(tmp_path / "out" / "model")


def test_bad_pair_input(tiny_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no pairs"):
        run_reward(config(tiny_dir, tmp_path, train_file=str(empty)))
    ties = tmp_path / "ties.jsonl"
    ties.write_text(json.dumps(row("a", "x", "y", 2, 2)) + "\n")
    with pytest.raises(ValueError, match=r"ties.jsonl:1: chosen_tier 2 is not above"):
        run_reward(config(tiny_dir, tmp_path, train_file=str(ties)))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps(row("a", "x" * 100, "y")) + "\n")
    with pytest.raises(ValueError, match="every pair .* was dropped"):
        run_reward(config(tiny_dir, tmp_path, train_file=str(long), max_length=50))
    with pytest.raises(ValueError, match="a response is 103 tokens"):
        run_reward(config(tiny_dir, tmp_path, train_file=str(long), max_length=50, too_long="error"))


def test_tokenize_groups_drops_only_the_too_long_responses_and_their_pairs(tiny):
    _, tok = tiny
    groups = group_pairs([row("a", "ok", "no"), row("a", "ok", "n" * 80), row("b", "y" * 80, "x")])
    items, dropped = tokenize_groups(groups, tok, max_length=40)
    assert dropped == {"responses": 2, "pairs": 2, "questions": 1}
    assert len(items) == 1 and items[0]["pairs"] == [(0, 1)] and items[0]["tiers"] == [3, 1]


def _ex(i, gold):
    return Example(id=f"t{i}", question=f"q{i}", gold=gold, answer_type="number")


def test_best_of_n_compares_reranking_with_first_sample_vote_and_oracle():
    def check(text, ex):
        pred = text.split()[-1] if text.strip() else None
        return pred, pred == ex.gold

    examples = [_ex(0, "4"), _ex(1, "7"), _ex(2, "1")]
    samples = [["a 3", "b 4", "c 3"], ["a 7", "b 5", "c 5"], ["", "b 2", "c 2"]]
    scores = [[0.1, 0.9, 0.2], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1]]
    rows, m = best_of_n(examples, samples, scores, check=check)
    assert [r["best"] for r in rows] == [1, 1, 0]
    assert m["best_of_n_accuracy"] == pytest.approx(1 / 3)  # only question 0
    assert m["first_sample_accuracy"] == pytest.approx(1 / 3)  # only question 1
    assert m["majority_vote_accuracy"] == 0.0  # 3, 5, 2
    assert m["oracle_accuracy"] == pytest.approx(2 / 3)
    assert m["no_answer_rate"] == pytest.approx(1 / 9)


def test_run_rerank_scores_generated_samples_with_the_reward_model(tiny_dir, tmp_path):
    from selfmotivated.generation import Completion

    model, tok = load_reward_model(run_reward(config(tiny_dir, tmp_path, epochs=6))["model_dir"])

    class FakeGenerator:  # samples that contain the right number or not; the reward model must tell them apart
        def generate(self, prompts, params, progress=False):
            assert params.n == 3
            return [[Completion(t, [], "eos") for t in (" 3 legs. The answer is 3.", " 8 legs. The answer is 8.",
                                                         " 3 legs. The answer is 3.")] for _ in prompts]

    examples = [Example(id="s", question="legs of a spider?", gold="8", answer_type="number")]
    rerank = RerankConfig(reward_model="unused", n=3, out=str(tmp_path / "rerank"), chat="never", progress=False)
    result = run_rerank(rerank, generator=FakeGenerator(), policy_tokenizer=tok, reward_model=model,
                        reward_tokenizer=tok, examples=examples)
    assert result["n_questions"] == 1 and result["n_samples"] == 3
    assert result["first_sample_accuracy"] == 0.0 and result["majority_vote_accuracy"] == 0.0
    assert result["oracle_accuracy"] == 1.0
    saved = [json.loads(line) for line in (tmp_path / "rerank" / "rerank.jsonl").read_text().splitlines()]
    assert len(saved[0]["scores"]) == 3 and saved[0]["samples"][1].startswith(" 8 legs")
    assert json.loads((tmp_path / "rerank" / "rerank_metrics.json").read_text())["metrics"] == result


def test_run_rerank_resumes_after_an_interruption(tiny_dir, tmp_path):
    from selfmotivated.generation import Completion

    model, tok = load_reward_model(run_reward(config(tiny_dir, tmp_path, epochs=1))["model_dir"])
    seen = []

    class Generator:  # dies on its `fail_at`-th call, like a killed run
        def __init__(self, fail_at=None):
            self.calls, self.fail_at = 0, fail_at

        def generate(self, prompts, params, progress=False):
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt
            seen.extend(prompts)
            return [[Completion(f" The answer is {i}.", [], "eos") for i in range(params.n)] for _ in prompts]

    examples = [Example(id=f"q{i}", question=f"what is {i}?", gold="1", answer_type="number") for i in range(3)]
    out = tmp_path / "rerank"

    def rerank(generator, **kw):  # batch 2 of n=2 samples: one question a chunk
        cfg = RerankConfig(reward_model="unused", n=2, batch_size=2, out=str(out), chat="never", progress=False, **kw)
        return run_rerank(cfg, generator=generator, policy_tokenizer=tok, reward_model=model,
                          reward_tokenizer=tok, examples=examples)

    with pytest.raises(KeyboardInterrupt):
        rerank(Generator(fail_at=2))
    assert [json.loads(x)["id"] for x in (out / "rerank.jsonl").read_text().splitlines()] == ["q0"]
    seen.clear()
    result = rerank(Generator())
    assert len(seen) == 2  # only the two questions not done
    rows = [json.loads(x) for x in (out / "rerank.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and result["n_questions"] == 3
    assert result["oracle_accuracy"] == 1.0 and result["first_sample_accuracy"] == 0.0
    with pytest.raises(ValueError, match="temperature"):
        rerank(Generator(), temperature=0.1)
    # Prompts follow the templates file, and samples made with other templates are not mixed in.
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps({"response_start": "Let us count."}))
    with pytest.raises(ValueError, match="templates"):
        rerank(Generator(), templates=str(templates))
    out = tmp_path / "rerank-templates"
    seen.clear()
    rerank(Generator(), templates=str(templates))
    assert len(seen) == 3 and all(p.endswith("Let us count.") for p in seen)


def test_reward_stage_reports_best_of_n_with_the_real_generator(tiny_dir, tmp_path):
    """bon_n > 0: after training, sample with the backbone (here tiny-random, via the generation engine),
    score with the reward model and check answers with the project's checker, on a synthetic test split."""
    metrics = run_reward(config(tiny_dir, tmp_path, epochs=1, bon_n=2, bon_dataset="synthetic_coin_flip",
                                bon_limit=3, bon_max_new_tokens=8, bon_temperature=1.0))
    bon = metrics["best_of_n"]
    assert bon["n_questions"] == 3 and bon["n_samples"] == 2
    for key in ("first_sample_accuracy", "majority_vote_accuracy", "best_of_n_accuracy", "oracle_accuracy"):
        assert 0.0 <= bon[key] <= bon["oracle_accuracy"] or key == "oracle_accuracy"
    rows = [json.loads(line) for line in (tmp_path / "out" / "best_of_n" / "rerank.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["samples"]) == 2 and len(r["scores"]) == 2 for r in rows)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["metrics"]["best_of_n"] == bon


def test_reward_model_scores_a_cut_off_copy_below_the_finished_rationale(tiny_dir, tmp_path):
    """Training pairs mark unfinished text (scored without EOS); after training, the reward model prefers a
    rationale that ended to the same text cut off at the token limit, on questions it never saw."""
    rng = random.Random(0)
    path = tmp_path / "cut.jsonl"
    with open(path, "w") as fh:
        for i in range(120):
            animal = list(LEGS)[i % len(LEGS)]
            text = f" A {animal} has {LEGS[animal]} legs, so the answer is {LEGS[animal]}."
            cut = text[: rng.randint(8, len(text) - 6)]
            fh.write(json.dumps({**row(f"q{i}", text, cut, prompt=f"Q{i}: legs of a {animal}?\nA:"),
                                 "chosen_finished": True, "rejected_finished": False}) + "\n")
    metrics = run_reward(config(tiny_dir, tmp_path, train_file=str(path), epochs=3))
    model, tok = load_reward_model(tmp_path / "out" / "model")
    prompts, finished_texts, cut_texts = [], [], []
    for i, animal in enumerate(["cat", "horse", "crab", "fish"]):
        text = f" The {animal} walks, so the answer is {i + 3}."
        prompts.append(f"Q{1000 + i}: legs of a {animal}?\nA:")
        finished_texts.append(text)
        cut_texts.append(text[: len(text) // 2])
    ended = score_texts(model, tok, prompts, finished_texts)
    same_text_cut = score_texts(model, tok, prompts, finished_texts, finished=[False] * 4)
    half = score_texts(model, tok, prompts, cut_texts, finished=[False] * 4)
    assert metrics["heldout"]["pairwise_accuracy"] > 0.9
    assert all(e > c for e, c in zip(ended, same_text_cut)), (ended, same_text_cut)
    assert all(e > c for e, c in zip(ended, half)), (ended, half)


def write_policy_samples(folder, n=200, seed=1):
    """A finished sft_round2 folder for the legs toy (its questions a JSONL dataset of the user's): per question
    two right samples and two wrong ones, one cut off at the token limit before any answer; kept.jsonl holds the
    prompts of questions with a right sample, samples_settings.json the dataset."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    questions, samples, kept = [], [], []
    for i in range(n):
        animal = list(LEGS)[i % len(LEGS)]
        right = LEGS[animal]
        questions.append({"id": f"q{i}", "question": f"Legs of a {animal}?", "answer": str(right), "split": "train"})
        wrong = rng.sample([x for x in range(10) if x != right], 2)
        texts = [(f" Legs: {right}.", True, "stop"), (f" It has {right} legs. The answer is {right}. More", True, "length"),
                 (f" Legs: {wrong[0]}.", False, "stop"), (" It has many legs and", False, "length")]
        for j, (text, ok, finish) in enumerate(texts):
            samples.append({"id": f"q{i}", "slot": i, "sample": j, "text": text, "correct": ok, "finish_reason": finish})
            if ok:
                kept.append({"question_id": f"q{i}", "prompt": f"Q{i}: legs of a {animal}?\nA:", "response": text})
    (folder / "legs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (folder / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    data = {"dataset": str(folder / "legs.jsonl"), "split": "train", "id_field": "id", "answer_type": "number"}
    (folder / "samples_settings.json").write_text(json.dumps({"data": data}))
    return str(folder)


def test_policy_pairs_put_each_right_sample_above_each_wrong_one_as_ppo_reads_them(tmp_path):
    from selfmotivated.expert_iteration import policy_pairs

    folder = write_policy_samples(tmp_path / "ei", n=3)
    with open(tmp_path / "ei" / "samples.jsonl", "a") as fh:  # right samples only: no pair
        for _ in range(2):
            fh.write(json.dumps({"id": "q2", "text": " Legs: 2.", "correct": True, "finish_reason": "stop"}) + "\n")
    pairs = policy_pairs(folder)
    assert len(pairs) == 3 * 2 * 2 and {p["question_id"] for p in pairs} == {"q0", "q1", "q2"}
    assert all(p["pair_type"] == "policy>policy" and (p["chosen_tier"], p["rejected_tier"]) == (3, 1) for p in pairs)
    assert pairs[0]["prompt"] == "Q0: legs of a spider?\nA:"
    # As PPO scores a rollout: a text with an answer ends at our answer line and is finished, whatever ran on
    # after it; one cut off with no answer stays unfinished.
    chosen = {(p["chosen"], p["chosen_finished"]) for p in pairs if p["question_id"] == "q0"}
    assert chosen == {("Legs: 8. The answer is 8.", True), ("It has 8 legs. The answer is 8.", True)}
    rejected = {(p["rejected"], p["rejected_finished"]) for p in pairs if p["question_id"] == "q0"}
    assert ("It has many legs and", False) in rejected
    assert len(policy_pairs(folder, max_pairs_per_question=1)) == 3
    with open(tmp_path / "ei" / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "q77", "text": " Legs: 2.", "correct": True}) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:15: question 'q77' is not in"):
        policy_pairs(folder)
    (tmp_path / "ei" / "kept.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="kept.jsonl"):
        policy_pairs(folder)


def test_merge_policy_pairs_keeps_one_tier_and_one_prompt_per_question():
    from selfmotivated.reward import merge_policy_pairs

    rank = [row("q1", " gold 8.", " 8 legs.", ct=3, rt=2, prompt="P1"), row("q2", " a", " b", prompt="P2")]
    extra = [row("q1", " 8 legs.", " 3 legs.", prompt="P1"),  # " 8 legs." is tier 2 in the rank: left out
             row("q1", " 8 legs!", " 3 legs.", prompt="P1"),
             row("q2", " a", " c", prompt="other prompt")]  # same id, another prompt: a question of its own
    merged = merge_policy_pairs(rank, extra)
    assert [(r["question_id"], r["chosen"]) for r in merged] == [("q1", " 8 legs!"), ("q2 (policy prompt)", " a")]
    assert len(group_pairs(rank + merged)) == 3


def test_reward_model_learns_from_policy_pairs(tiny_dir, tmp_path):
    """The rank's labels are shuffled (no signal); the policy's own right and wrong samples carry the rule."""
    shuffled = write_legs_pairs(tmp_path / "shuffled.jsonl", flip=True)
    folder = write_policy_samples(tmp_path / "ei")
    metrics = run_reward(config(tiny_dir, tmp_path, train_file=shuffled, policy_pairs=folder,
                                policy_pairs_per_question=2))
    by_type = metrics["heldout"]["accuracy_by_pair_type"]
    assert by_type["policy>policy"]["n_pairs"] == 40 * 2 and by_type["policy>policy"]["accuracy"] >= 0.8
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["data"]["pair_rows"] == 400 + 200 * 2
    with pytest.raises(ValueError, match="policy_pairs_per_question"):
        config(tiny_dir, tmp_path, policy_pairs=folder, policy_pairs_per_question=0)


def test_answer_edits_teach_the_reward_model_what_the_rank_left_to_a_sign(tiny_dir, tmp_path):
    """The rank of a signed toy task has a shortcut: every negative answer it holds is a right one (the model
    never wrote a wrong negative number). Its edited copies put the negated answer below the right one, and the
    reward model learns those pairs too; the setting is counted, and checked."""
    signed = {"spider": 8, "dog": -4, "bird": 2, "snake": -6, "ant": 6}
    rng = random.Random(0)
    path = tmp_path / "signed.jsonl"
    with open(path, "w") as fh:
        for i in range(100):
            animal = list(signed)[i % len(signed)]
            right = signed[animal]
            for wrong in rng.sample([x for x in range(10) if x != abs(right)], 2):
                fh.write(json.dumps(row(f"q{i}", f" {right} legs. The answer is {right}.",
                                        f" {wrong} legs. The answer is {wrong}.", prompt=f"Q{i}: {animal}?\nA:")) + "\n")
    metrics = run_reward(config(tiny_dir, tmp_path, train_file=str(path), answer_edits=1))
    by_type = metrics["heldout"]["accuracy_by_pair_type"]
    edited = {t: v for t, v in by_type.items() if t.endswith(">edited")}
    assert sum(v["n_pairs"] for v in edited.values()) == 20  # one edit of each held-out question's right text
    assert all(v["accuracy"] >= 0.8 for v in edited.values())
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["data"]["pair_rows"] == 200 + 100
    # The validity report's probe scores right samples against their edited copies with the saved model.
    from selfmotivated.validity import score_answer_edits

    examples = [Example(id=f"e{i}", question=f"Legs of a {a}?", gold=str(n), answer_type="number")
                for i, (a, n) in enumerate(signed.items())]
    samples = [{"id": ex.id, "sample": 0, "text": f" {ex.gold} legs. The answer is {ex.gold}.",
                "prediction": ex.gold, "correct": True, "finished": True} for ex in examples]
    probe = score_answer_edits(tmp_path / "out" / "model", samples, examples, prompt="zero_shot", chat="auto",
                               templates=None)
    assert probe["negated"]["n"] == 5 and probe["other"]["n"] == 5
    assert 0.0 <= probe["negated"]["original_above"] <= 1.0
    with pytest.raises(ValueError, match="answer_edits must be >= 0"):
        config(tiny_dir, tmp_path, answer_edits=-1)
