"""Does the reward model measure correctness on what PPO will show it? The reward stage's validity report.

A reward model's held-out pairwise accuracy is measured on the pairs it was trained on: hinted and free
rationales of the rank. PPO shows it something else: free samples of the policy on training questions. So
the report samples exactly that population, fresh (the SFT policy, PPO's temperature and token limit, on
training questions that neither the rationales nor PPO use), scores each sample with the reward model,
and measures how well the score separates what our answer checker calls right from wrong:

- auroc: over all samples (n of them), the chance a right sample outscores a wrong one;
- within_question_auroc: the same, only comparing samples of one question (what PPO's group baseline
  uses), averaged over the questions that have both right and wrong samples;
- answer_prior_within_question_auroc: the within-question AUROC of a scorer that knows only each sample's
  stated answer (see `answer_prior_within_question_auroc`); a reward model no better than it prefers some
  answers whatever the question, a habit PPO would learn, not a check of the reasoning;
- within_question_auroc_by_gold: on tasks with few possible answers (yes/no, choices), the within-question
  AUROC over the questions of each gold answer: a habit is right on one side and wrong on the other;
- answer_edit_probe (numeric tasks): how often the reward model scores a right sample above the same text
  with its answer edited to a wrong one (`rationales/edits.py`), by edit: the negated answer (when the golds
  have both signs) and another wrong number. A checker of the answer puts the original above nearly always; a
  reward model that likes a minus sign puts the negated copy above, and PPO will find that (chain_sum);
- pairwise accuracy by pair type on the held-out pairs, and the accuracy of a provenance-only scorer
  (gold-hinted > free > wrong-hinted) on those pairs, from the reward stage's held-out metrics.

PPO refuses to start when the figure it learns from is below `ppo.min_reward_auroc` (ppo/gate.py): with a
per-question baseline (rloo) within_question_auroc, else auroc.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Sequence

from .metrics import auroc

log = logging.getLogger(__name__)

VALIDITY_FILE = "validity.json"
SAMPLES_FILE = "validity_samples.jsonl"


def _by_question(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["id"], []).append(r)
    return out


def within_question_auroc(rows: Sequence[dict]) -> tuple[float | None, int]:
    """(mean AUROC over questions that have both right and wrong samples, how many such questions)."""
    values = [auroc([r["score"] for r in rs], [r["correct"] for r in rs]) for rs in _by_question(rows).values()]
    values = [v for v in values if v is not None]
    return (statistics.fmean(values) if values else None), len(values)


def _gold_of_question(rs: Sequence[dict]):
    """A question's gold answer as its samples show it: what its right samples state (None when none is right)."""
    for r in rs:
        if r["correct"] and r.get("prediction") is not None:
            return str(r["prediction"])
    return None


def within_question_auroc_by_gold(rows: Sequence[dict], max_answers: int = 10) -> dict | None:
    """{gold answer: {"auroc", "n_questions"}} over the questions with both right and wrong samples, grouped by
    their gold (read off their right samples); None when those questions have more than `max_answers` distinct
    golds (numbers: a group per answer would say nothing) or no sample states a prediction."""
    groups: dict[str, list[float]] = {}
    for rs in _by_question(rows).values():
        value = auroc([r["score"] for r in rs], [r["correct"] for r in rs])
        gold = _gold_of_question(rs)
        if value is not None and gold is not None:
            groups.setdefault(gold, []).append(value)
    if not groups or len(groups) > max_answers:
        return None
    return {gold: {"auroc": statistics.fmean(v), "n_questions": len(v)} for gold, v in sorted(groups.items())}


def answer_prior_within_question_auroc(rows: Sequence[dict]) -> float | None:
    """The within-question AUROC of a scorer that knows only a sample's stated answer (no answer counts as one):
    its score is the reward model's mean score of the samples stating that answer on the other questions (left
    out, so it cannot copy the question's own scores), or the mean of all other questions' samples for an
    answer only this question states.

    Why: within one question, right and wrong samples differ exactly in the answer they state, so a reward
    model that simply prefers some answers (says "no" is better than "yes" everywhere) reaches a within-question
    AUROC above 0.5 on any task whose golds lean that way. This is what that preference alone earns; the reward
    model's figure above it is what depends on the question. None when no sample states a prediction."""
    if not any(r.get("prediction") is not None for r in rows):
        return None
    def key(r):
        return None if r.get("prediction") is None else str(r["prediction"])
    total_sum: dict = {}
    total_n: dict = {}
    for r in rows:
        total_sum[key(r)] = total_sum.get(key(r), 0.0) + r["score"]
        total_n[key(r)] = total_n.get(key(r), 0) + 1
    all_sum, all_n = sum(total_sum.values()), len(rows)
    prior_rows = []
    for q, rs in _by_question(rows).items():
        own_sum: dict = {}
        own_n: dict = {}
        for r in rs:
            own_sum[key(r)] = own_sum.get(key(r), 0.0) + r["score"]
            own_n[key(r)] = own_n.get(key(r), 0) + 1
        others_n = all_n - len(rs)
        fallback = (all_sum - sum(own_sum.values())) / others_n if others_n else 0.0
        for r in rs:
            n = total_n[key(r)] - own_n[key(r)]
            prior = (total_sum[key(r)] - own_sum[key(r)]) / n if n else fallback
            prior_rows.append({"id": q, "score": prior, "correct": r["correct"]})
    return within_question_auroc(prior_rows)[0]


def within_question_interval(rows: Sequence[dict], n_resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of the within-question AUROC, resampling the questions that have both right and
    wrong samples (they are the units: a question's samples share its difficulty). None below 2 questions."""
    import random

    values = [auroc([r["score"] for r in rs], [r["correct"] for r in rs]) for rs in _by_question(rows).values()]
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n_resamples))
    return [means[int(0.025 * n_resamples)], means[int(0.975 * n_resamples) - 1]]


def compare_within_question(rows_a: Sequence[dict], rows_b: Sequence[dict], n_resamples: int = 2000,
                            seed: int = 0) -> dict:
    """Two reward models on the same validity samples (two runs' validity_samples.jsonl from one policy, seed
    and questions): the difference of their within-question AUROCs (b minus a) on the questions where both
    saw the same samples with both right and wrong ones, with a 95% bootstrap interval over those questions.
    A question whose samples differ between the files (another policy, another seed) is left out and counted."""
    import random

    qa, qb = _by_question(rows_a), _by_question(rows_b)
    diffs, differing = [], 0
    for q in qa.keys() & qb.keys():
        a, b = sorted(qa[q], key=lambda r: r["sample"]), sorted(qb[q], key=lambda r: r["sample"])
        if [(r["text"], r["correct"]) for r in a] != [(r["text"], r["correct"]) for r in b]:
            differing += 1
            continue
        auc_a = auroc([r["score"] for r in a], [r["correct"] for r in a])
        auc_b = auroc([r["score"] for r in b], [r["correct"] for r in b])
        if auc_a is not None and auc_b is not None:
            diffs.append((auc_a, auc_b))
    result = {"n_questions": len(diffs), "n_questions_with_other_samples": differing,
              "a": None, "b": None, "diff": None, "ci95": None}
    if not diffs:
        return result
    result["a"] = statistics.fmean(x for x, _ in diffs)
    result["b"] = statistics.fmean(y for _, y in diffs)
    result["diff"] = result["b"] - result["a"]
    if len(diffs) >= 2:
        rng = random.Random(seed)
        means = sorted(statistics.fmean(y - x for x, y in rng.choices(diffs, k=len(diffs)))
                       for _ in range(n_resamples))
        result["ci95"] = [means[int(0.025 * n_resamples)], means[int(0.975 * n_resamples) - 1]]
    return result


def validity_figures(rows: Sequence[dict]) -> dict:
    """The report's figures from sample rows {id, score, correct, finished, prediction}."""
    scores = [r["score"] for r in rows]
    correct = [bool(r["correct"]) for r in rows]
    within, n_within = within_question_auroc(rows)
    right = [s for s, c in zip(scores, correct) if c]
    wrong = [s for s, c in zip(scores, correct) if not c]
    return {
        "auroc": auroc(scores, correct),
        "n": len(rows),
        "n_correct": sum(correct),
        "n_questions": len({r["id"] for r in rows}),
        "within_question_auroc": within,
        "within_question_auroc_ci95": within_question_interval(rows),
        "n_questions_with_both": n_within,
        "answer_prior_within_question_auroc": answer_prior_within_question_auroc(rows),
        "within_question_auroc_by_gold": within_question_auroc_by_gold(rows),
        "mean_score_correct": statistics.fmean(right) if right else None,
        "mean_score_wrong": statistics.fmean(wrong) if wrong else None,
        "truncated_frac": sum(not r["finished"] for r in rows) / len(rows) if rows else None,
    }


def sample_and_score(policy: str, reward_model_dir: str | Path, examples: Sequence, *, n: int, temperature: float,
                     max_new_tokens: int, prompt: str = "zero_shot", chat: str = "auto", templates: str | None = None,
                     seed: int = 0, device: str | None = None, batch_size: int = 64,
                     progress: bool = True) -> list[dict]:
    """n fresh samples per question from `policy`, each checked against the gold and scored by the reward
    model. Rows {id, sample, text, prediction, correct, finished, score}."""
    import torch

    from .answers import check_answer
    from .rationales.rank import reward_views
    from .generation import SamplingParams, make_generator
    from .models import load_model
    from .prompts import build_prompt, load_templates, stop_strings
    from .reward import load_reward_model, score_texts

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_templates(templates)
    model, tokenizer = load_model(policy, device=device)
    prompts = [build_prompt(ex, tokenizer, style=prompt, chat=chat, templates=loaded) for ex in examples]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed,
                            stop=stop_strings(tokenizer, chat))
    completions = make_generator(model, tokenizer, max_seqs=batch_size).generate(prompts, params, progress=progress)
    del model
    reward_model, reward_tokenizer = load_reward_model(reward_model_dir, device=device)
    texts, cut, owners = [], [], []
    for i, cs in enumerate(completions):
        for c in cs:
            texts.append(c.text)
            cut.append(c.finish_reason == "length")
            owners.append(i)
    views, finished = reward_views(texts, [examples[i] for i in owners], cut)  # as PPO scores them
    scores = score_texts(reward_model, reward_tokenizer, [prompts[i] for i in owners], views, finished=finished)
    rows, k = [], 0
    for i, cs in enumerate(completions):
        for j, _ in enumerate(cs):
            prediction, ok = check_answer(texts[k], examples[i])
            rows.append({"id": examples[i].id, "sample": j, "text": texts[k], "prediction": prediction,
                         "correct": bool(ok), "finished": finished[k], "score": scores[k]})
            k += 1
    return rows


def answer_edit_items(rows: Sequence[dict], examples: Sequence, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """(question id, edit kind, response, edited response) for each right, finished sample of a numeric question:
    its response as the reward model reads it (`reward_views`) with the answer negated (kind "negated", when the
    examples' golds have both signs) and changed to another wrong number ("other")."""
    from .rationales.edits import both_signs, edit_answer, negated, wrong_numbers
    from .rationales.rank import reward_views
    from .records import canonical_number

    by_id = {ex.id: ex for ex in examples}
    golds = set()
    for ex in examples:
        if ex.answer_type == "number":
            try:
                golds.add(canonical_number(ex.gold))
            except ValueError:
                pass
    signed = both_signs(golds)
    items = []
    for r in rows:
        ex = by_id.get(r["id"])
        if ex is None or ex.answer_type != "number" or not r["correct"] or r.get("prediction") is None:
            continue
        (view,), (finished,) = reward_views([r["text"]], [ex], [not r.get("finished", True)])
        if not finished:
            continue
        try:
            answer = canonical_number(r["prediction"])
        except ValueError:
            continue
        for wrong in wrong_numbers(answer, 2 if signed else 1, signed, (seed, r["id"], r.get("sample"))):
            edited = edit_answer(view, answer, wrong)
            if edited is not None:
                items.append((ex.id, "negated" if wrong == negated(answer) else "other", view, edited))
    return items


def answer_edit_probe(items: Sequence[tuple[str, str, str, str]], original_scores: Sequence[float],
                      edited_scores: Sequence[float]) -> dict | None:
    """{edit kind: {"original_above": share of edits the original outscores (ties half), "n"}}; None without edits."""
    out: dict[str, list[float]] = {}
    for (_, kind, _, _), original, edited in zip(items, original_scores, edited_scores, strict=True):
        out.setdefault(kind, []).append(1.0 if original > edited else 0.5 if original == edited else 0.0)
    return {kind: {"original_above": statistics.fmean(v), "n": len(v)} for kind, v in sorted(out.items())} or None


def score_answer_edits(reward_model_dir: str | Path, rows: Sequence[dict], examples: Sequence, *, prompt: str,
                       chat: str, templates: str | None, seed: int = 0, device: str | None = None) -> dict | None:
    """The answer-edit probe of sample rows: each right sample and its edited copies scored by the reward model
    in one pass (None: no numeric question has a right sample to edit)."""
    items = answer_edit_items(rows, examples, seed)
    if not items:
        return None
    import torch

    from .prompts import build_prompt, load_templates
    from .reward import load_reward_model, score_texts

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_reward_model(reward_model_dir, device=device)
    by_id = {ex.id: ex for ex in examples}
    loaded = load_templates(templates)
    prompts = {qid: build_prompt(by_id[qid], tokenizer, style=prompt, chat=chat, templates=loaded)
               for qid in dict.fromkeys(qid for qid, _, _, _ in items)}
    originals = list(dict.fromkeys((qid, view) for qid, _, view, _ in items))
    scored = score_texts(model, tokenizer, [prompts[q] for q, _ in originals] + [prompts[q] for q, *_ in items],
                         [v for _, v in originals] + [e for *_, e in items])
    original_score = dict(zip(originals, scored[:len(originals)]))
    return answer_edit_probe(items, [original_score[(q, v)] for q, _, v, _ in items], scored[len(originals):])


def write_validity_report(out: Path, rows: Sequence[dict], heldout_pairs: dict | None, settings: dict,
                          edit_probe: dict | None = None) -> dict:
    """OUT/validity.json (figures + the held-out pair metrics by type + the answer-edit probe) and
    OUT/validity_samples.jsonl."""
    from .training import write_json

    report = validity_figures(rows)
    if edit_probe:
        report["answer_edit_probe"] = edit_probe
    if heldout_pairs:
        report["pairwise_accuracy"] = heldout_pairs.get("pairwise_accuracy")
        report["by_pair_type"] = heldout_pairs.get("accuracy_by_pair_type", {})
        report["provenance_baseline_accuracy"] = heldout_pairs.get("provenance_baseline_accuracy")
    report["settings"] = settings
    (out / SAMPLES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / VALIDITY_FILE, report)
    return report


def run_validity(out: Path, reward_model_dir: Path, policy: str, examples: Sequence, heldout_pairs: dict | None,
                 *, n: int, temperature: float, max_new_tokens: int, prompt: str, chat: str, templates: str | None,
                 seed: int, progress: bool) -> dict:
    """Sample, score and write the validity report (reusing the samples of an earlier run with the same
    settings: the report is cheap to rewrite, the samples are not)."""
    settings = {"policy": policy, "questions": [ex.id for ex in examples], "n": n, "temperature": temperature,
                "max_new_tokens": max_new_tokens, "prompt": prompt, "chat": chat, "templates": templates,
                "seed": seed, "reward_model": str(reward_model_dir)}
    old = out / VALIDITY_FILE
    if old.is_file() and (out / SAMPLES_FILE).is_file():
        before = json.loads(old.read_text())
        if before.get("settings") == settings:
            rows = [json.loads(line) for line in (out / SAMPLES_FILE).read_text().splitlines() if line.strip()]
            probe = before.get("answer_edit_probe") or score_answer_edits(
                reward_model_dir, rows, examples, prompt=prompt, chat=chat, templates=templates, seed=seed)
            return write_validity_report(out, rows, heldout_pairs, settings, probe)
    t0 = time.perf_counter()
    rows = sample_and_score(policy, reward_model_dir, examples, n=n, temperature=temperature,
                            max_new_tokens=max_new_tokens, prompt=prompt, chat=chat, templates=templates, seed=seed,
                            progress=progress)
    probe = score_answer_edits(reward_model_dir, rows, examples, prompt=prompt, chat=chat, templates=templates,
                               seed=seed)
    report = write_validity_report(out, rows, heldout_pairs, settings, probe)
    log.info("reward validity: AUROC %s on %d fresh samples of %d held-out training questions (%.0f s)",
             report["auroc"], report["n"], report["n_questions"], time.perf_counter() - t0)
    return report


def format_validity(report: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    lines = [f"reward validity: AUROC {f(report.get('auroc'))} on {report.get('n')} fresh samples "
             f"({report.get('n_correct')} right) of {report.get('n_questions')} held-out training questions; "
             f"within-question AUROC {f(report.get('within_question_auroc'))} "
             f"({report.get('n_questions_with_both')} questions with both; a scorer that knows only the stated "
             f"answer: {f(report.get('answer_prior_within_question_auroc'))})"]
    if report.get("within_question_auroc_by_gold"):
        parts = [f"gold {gold}: {f(v['auroc'])} ({v['n_questions']} questions)"
                 for gold, v in report["within_question_auroc_by_gold"].items()]
        lines.append("within-question AUROC by gold answer: " + ", ".join(parts))
    if report.get("answer_edit_probe"):
        parts = [f"{kind} {f(v['original_above'])} (n={v['n']})" for kind, v in report["answer_edit_probe"].items()]
        lines.append("right samples scored above their answer-edited copies: " + ", ".join(parts))
    if report.get("by_pair_type"):
        parts = [f"{t} {f(v['accuracy'])} (n={v['n_pairs']})" for t, v in report["by_pair_type"].items()]
        lines.append("held-out pairs by type: " + ", ".join(parts)
                     + f"; provenance-only baseline {f(report.get('provenance_baseline_accuracy'))}")
    return "\n".join(lines)
