"""The rank: tiers, pairs and the SFT set, as pure functions of stored rationale rows.

Each rationale gets an OUTCOME from its kind and the answers the checks found, and the tier rules map
(kind, outcome) to a tier (higher is better) or to None (left out of the rank):

| kind  | outcome        | meaning                                                              | tier |
|-------|----------------|----------------------------------------------------------------------|------|
| free  | correct        | states the gold; forcing (when run) also reaches the gold            | 3    |
| free  | unsupported    | states the gold, but forcing reaches another answer or none          | 2    |
| free  | wrong          | states another answer                                                | 1    |
| free  | no_answer      | states no answer (often cut off at max_new_tokens)                   | 1    |
| gold  | consistent     | states the gold and forcing (when run) reaches the gold              | 3    |
| gold  | inconsistent   | states another answer, or forcing does not reach the gold            | 2    |
| gold  | no_answer      | states no answer (unfinished text is tier 1, hinted or not)          | 1    |
| wrong | consistent     | states the wrong target and forcing (when run) reaches it            | 1    |
| wrong | inconsistent   | reaches neither the target nor the gold                              | 1    |
| wrong | no_answer      | states no answer, and forcing does not reach the gold                | 1    |
| wrong | reaches_gold   | states the gold or forcing reaches the gold                          | None |

A rationale that opens with its answer ("The answer is 26. Step 1: ...") counts as not checked
(free: unsupported, gold: inconsistent) while `distrust_answer_first` is on: forcing copies the answer
stated above it, so the check passes whatever the reasoning says, and a gold-hinted one has mostly
copied its hint. On CommonsenseQA 17 of 30 top-tier rationales of the default model were such.

This is METHOD.md's default (3: free correct and gold-hinted consistent; 2: gold-hinted inconsistent;
1: free wrong and wrong-hinted) with three decisions of ours:
- free/unsupported is 2, not 3: a free rationale whose own reasoning, forced, does not reach the gold
  it states is right by luck, the same failure as an inconsistent gold-hinted rationale.
- free/no_answer and gold/no_answer are 1: a rationale that never reaches an answer fails the task,
  hinted or not (one rule for unfinished text; with gold/no_answer at 2, "was written under a hint"
  alone separated unfinished texts); ranking it below correct ones teaches the reward model to prefer
  finished reasoning, which small models lack.
- wrong/reaches_gold is left out: it was written to argue for a wrong answer, yet its words or its
  forced continuation land on the gold. Neither a trustworthy negative (its reasoning may be right)
  nor a positive (it was steered by a wrong hint): an ambiguous label is worse than no label.
Rules are configurable: RankConfig.tier_rules overrides entries ("free/unsupported=3,wrong/reaches_gold=1").

After tiers: leaked rationales are dropped (filter_leaks), then near-duplicates within a question
(same text after lowercasing, collapsing whitespace and dropping punctuation) count once, keeping
the highest-tier copy. Pairs are every (higher tier, lower tier) pair of a question, ties excluded, and by
default only between rationales made the same way (`pairs: same_source`: free with free, hinted with
hinted), so that how a rationale was generated cannot separate a pair: PPO's rollouts are all free samples,
and a reward model that learned "written under a hint" would score them all alike. Pairs are capped per
question by a seeded subsample that keeps free-vs-free pairs first. The SFT set is the top tier (the
highest tier in the rules).
"""

from __future__ import annotations

import ast
import json
import random
import re
import string
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .checks import opens_with_answer, render_response, split_answer_line
from .store import KINDS
from .wrong import stable_seed

OUTCOMES = {
    "free": ("correct", "unsupported", "wrong", "no_answer"),
    "gold": ("consistent", "inconsistent", "no_answer"),
    "wrong": ("consistent", "inconsistent", "no_answer", "reaches_gold"),
}
DEFAULT_TIERS: dict[str, int | None] = {
    "free/correct": 3,
    "free/unsupported": 2,
    "free/wrong": 1,
    "free/no_answer": 1,
    "gold/consistent": 3,
    "gold/inconsistent": 2,
    "gold/no_answer": 1,
    "wrong/consistent": 1,
    "wrong/inconsistent": 1,
    "wrong/no_answer": 1,
    "wrong/reaches_gold": None,
}
_EXCLUDE_WORDS = ("none", "null", "drop", "exclude", "")
PAIR_MODES = ("same_source", "free", "all")


def source(kind: str) -> str:
    """How a rationale was made, as a pair sees it: free (unhinted, what PPO samples) or hinted."""
    return "free" if kind == "free" else "hinted"


def pair_allowed(hi: dict, lo: dict, mode: str) -> bool:
    if mode == "all":
        return True
    if mode == "free":
        return hi["kind"] == lo["kind"] == "free"
    return source(hi["kind"]) == source(lo["kind"])


def pair_type(hi: dict, lo: dict) -> str:
    """'free>free', 'gold>wrong', 'gold>free', ...: the kinds of a pair's better and worse rationale."""
    return f"{hi['kind']}>{lo['kind']}"


def is_finished(row: dict) -> bool:
    """Whether a rationale, as the reward model sees it, ended: one that states an answer is rendered ending
    at its answer line; one with no answer ended only when it was not cut off at the token limit."""
    return row.get("answer") is not None or row.get("finish_reason") != "length"


@dataclass
class RankConfig:
    """How stored rationales become tiers, pairs and an SFT set (applied at stats/export time)."""

    tier_rules: str | None = field(
        default=None,
        metadata={
            "help": "overrides of the default tier table, 'kind/outcome=tier' separated by commas "
            "(tier 'none' leaves those rationales out), or a JSON object; kinds: free, gold, wrong; e.g. "
            "'free/unsupported=3,wrong/reaches_gold=1'"
        },
    )
    use_forced_answer: bool = field(
        default=True,
        metadata={"help": "judge consistency by the forced answer too (when generation ran answer forcing)"},
    )
    distrust_answer_first: bool = field(
        default=True,
        metadata={
            "help": "a rationale that states its answer before any reasoning is not counted as checked "
            "(free: unsupported, gold: inconsistent): answer forcing would only copy that answer"
        },
    )
    filter_leaks: bool = field(
        default=True,
        metadata={
            "help": "leave hinted rationales that say they were given the answer out of the rank "
            "(they stay stored)"
        },
    )
    max_pairs_per_question: int | None = field(
        default=32,
        metadata={"help": "at most this many pairs per question (a seeded subsample); empty for all"},
    )
    pair_seed: int = field(default=0, metadata={"help": "seed of the per-question pair subsample"})
    pairs: str = field(
        default="same_source",
        metadata={
            "help": "which rationales may form a pair: same_source (free with free, hinted with hinted), "
            "free (free samples only: the population PPO scores) or all (any two tiers, the paper's rank)",
            "choices": ["same_source", "free", "all"],
        },
    )
    sft_max_per_question: int | None = field(
        default=None,
        metadata={
            "help": "at most this many SFT rationales per question (the first in rank order); empty for all"
        },
    )

    sft_min_body_words: int = field(
        default=5,
        metadata={
            "help": "leave top-tier rationales whose reasoning (the text before the answer line) has fewer "
            "words out of the SFT set: they teach the model to answer without reasoning (0 keeps all)"
        },
    )
    sft_balance_answers: bool = field(
        default=False,
        metadata={
            "help": "for yes/no and multiple-choice datasets, keep as many SFT rows of each gold answer as "
            "the rarest one has (a seeded subsample), so SFT does not teach the majority answer"
        },
    )

    def __post_init__(self):
        self.tiers = parse_tier_rules(self.tier_rules)  # raises on a bad rule
        if self.pairs not in PAIR_MODES:
            raise ValueError(f"pairs must be one of {PAIR_MODES}, got {self.pairs!r}")
        if self.sft_min_body_words < 0:
            raise ValueError(f"sft_min_body_words must be >= 0, got {self.sft_min_body_words}")
        if self.max_pairs_per_question is not None and self.max_pairs_per_question < 0:
            raise ValueError(
                f"max_pairs_per_question must be >= 0 or empty, got {self.max_pairs_per_question}"
            )
        if self.sft_max_per_question is not None and self.sft_max_per_question < 0:
            raise ValueError(f"sft_max_per_question must be >= 0 or empty, got {self.sft_max_per_question}")

    @property
    def top_tier(self) -> int | None:
        tiers = [t for t in self.tiers.values() if t is not None]
        return max(tiers) if tiers else None

    def to_dict(self) -> dict:
        return {**asdict(self), "tiers": dict(self.tiers)}


def parse_tier_rules(rules) -> dict[str, int | None]:
    """The default tier table updated by `rules`: None, a dict, a JSON/Python mapping string, or
    "kind/outcome=tier,..." text. Unknown kinds/outcomes and non-integer tiers are errors."""
    tiers = dict(DEFAULT_TIERS)
    if rules is None or (isinstance(rules, str) and not rules.strip()):
        return tiers
    if isinstance(rules, str):
        text = rules.strip()
        if text.startswith("{"):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                try:  # a YAML mapping passed through str() arrives as a Python dict literal
                    items = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise ValueError(f"tier_rules: not a valid JSON object: {text!r}") from None
        else:
            items = {}
            for part in re.split(r"[,;\s]+", text):
                if not part:
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"tier_rules: entry {part!r} is not 'kind/outcome=tier'")
                items[key.strip()] = value.strip()
    elif isinstance(rules, dict):
        items = rules
    else:
        raise ValueError(f"tier_rules must be text or a mapping, got {type(rules).__name__}")
    for key, value in items.items():
        kind, sep, outcome = str(key).replace(":", "/").partition("/")
        if kind not in KINDS:
            raise ValueError(f"tier_rules: unknown kind {kind!r} in {key!r}; kinds: {', '.join(KINDS)}")
        if not sep or outcome not in OUTCOMES[kind]:
            raise ValueError(
                f"tier_rules: unknown outcome {outcome!r} for kind {kind!r} in {key!r}; "
                f"outcomes of {kind}: {', '.join(OUTCOMES[kind])}"
            )
        if value is None or (isinstance(value, str) and value.strip().lower() in _EXCLUDE_WORDS):
            tiers[f"{kind}/{outcome}"] = None
            continue
        try:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            tiers[f"{kind}/{outcome}"] = int(float(value))
        except (TypeError, ValueError):
            raise ValueError(
                f"tier_rules: tier of {key!r} must be an integer or 'none', got {value!r}"
            ) from None
    return tiers


def outcome(row: dict, gold: str, answer_type: str, use_forced_answer: bool = True,
            distrust_answer_first: bool = False) -> str:
    """The outcome of one stored rationale (see the module table)."""
    from ..answers import answers_match

    kind, answer, forced = row["kind"], row["answer"], row["forced"]
    forced_checked = use_forced_answer and row.get("forced_text") is not None
    unchecked = distrust_answer_first and opens_with_answer(row["text"])

    def reaches(value: str | None, goal: str) -> bool:
        return value is not None and answers_match(value, goal, answer_type)

    def forced_ok(goal: str) -> bool:
        return not unchecked and (not forced_checked or reaches(forced, goal))

    if kind == "free":
        if answer is None:
            return "no_answer"
        if not reaches(answer, gold):
            return "wrong"
        return "correct" if forced_ok(gold) else "unsupported"
    if kind == "gold":
        if answer is None:
            return "no_answer"
        return "consistent" if forced_ok(gold) and reaches(answer, gold) else "inconsistent"
    if kind == "wrong":
        if reaches(answer, gold) or (forced_checked and reaches(forced, gold)):
            return "reaches_gold"
        if answer is None:
            return "no_answer"
        return "consistent" if reaches(answer, row["target"]) and forced_ok(row["target"]) else "inconsistent"
    raise ValueError(f"unknown rationale kind {kind!r}; kinds: {', '.join(KINDS)}")


_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Text for near-duplicate detection: lowercase, no punctuation, whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCT).split())


def response_of(row: dict, answer_type: str) -> str:
    """A rationale in training format: its body plus our final-answer line for the answer it states. With
    no answer to render, the text as written ("The answer is X." alone is a real, bad response)."""
    if row["answer"] is None:
        return row["text"].strip()
    body, _ = split_answer_line(row["text"])
    return render_response(body, row["answer"], answer_type)


def reward_views(texts: Sequence[str], examples: Sequence, cut_off: Sequence[bool]) -> tuple[list[str], list[bool]]:
    """(responses, finished) of freshly sampled texts (PPO rollouts, best-of-N and validity samples) as the
    reward model was trained to read rationales (`response_of`, `is_finished`): a text that states an answer
    (by our checker, against its example) ends at our answer line, whatever it ran on to after it, and is
    finished; one with no answer stays as written, finished unless it was cut off at the token limit. Without
    this, a response that answers and then runs on to the limit is read without its EOS, a kind of text the
    reward model never saw in training, and its score there means nothing (PPO's truncation penalty still
    applies to it). An example of None: the text as written."""
    from ..answers import check_answer

    responses, finished = [], []
    for text, example, cut in zip(texts, examples, cut_off, strict=True):
        answer = check_answer(text, example)[0] if example is not None else None
        row = {"text": text, "answer": answer, "finish_reason": "length" if cut else "stop"}
        responses.append(response_of(row, example.answer_type) if example is not None else text.strip())
        finished.append(is_finished(row))
    return responses, finished


def words(text: str) -> int:
    return len(text.split())


def rank_question(question: dict, rows: list[dict], config: RankConfig) -> dict:
    """Rank one question's rationales.

    Returns {"all": every row annotated (outcome, tier, status), "ranked": the kept rows in rank order
    (tier high to low, then storage order), "n_duplicates", "n_leaks_filtered", "n_excluded"}.
    status is "ranked", "excluded" (no tier, or an empty response), "leak" (filtered) or "duplicate".
    """
    gold, answer_type = question["gold"], question["answer_type"]
    annotated = []
    for row in rows:
        out = outcome(row, gold, answer_type, config.use_forced_answer, config.distrust_answer_first)
        response = response_of(row, answer_type)
        annotated.append(
            {
                **row,
                "outcome": out,
                "tier": config.tiers[f"{row['kind']}/{out}"],
                "response": response,
                "status": "ranked",
            }
        )
    for row in annotated:
        if row["tier"] is None or not row["response"].strip():  # an empty response teaches nothing
            row["status"] = "excluded"
        elif row["leak"] and config.filter_leaks:
            row["status"] = "leak"
    candidates = [r for r in annotated if r["status"] == "ranked"]
    # Stable sort: the highest tier first, so the copy of a duplicate that is kept is the best one.
    candidates.sort(key=lambda r: -r["tier"])
    seen: set[str] = set()
    ranked = []
    for row in candidates:
        key = normalize_text(row["response"])
        if key in seen:
            row["status"] = "duplicate"
            continue
        seen.add(key)
        ranked.append(row)
    counts = Counter(r["status"] for r in annotated)
    return {
        "all": annotated,
        "ranked": ranked,
        "n_duplicates": counts["duplicate"],
        "n_leaks_filtered": counts["leak"],
        "n_excluded": counts["excluded"],
    }


def question_pairs(question: dict, ranked: list[dict], config: RankConfig) -> tuple[list[dict], int]:
    """(pairs after the cap, number before the cap) for one question's ranked rationales."""
    pairs = [(hi, lo) for hi in ranked for lo in ranked
             if hi["tier"] > lo["tier"] and pair_allowed(hi, lo, config.pairs)]
    n_all = len(pairs)
    cap = config.max_pairs_per_question
    if cap is not None and n_all > cap:
        # Free-vs-free pairs first (what PPO's rollouts are), then a seeded subsample of each group.
        rng = random.Random(stable_seed("pairs", config.pair_seed, question["id"]))
        free = [i for i, (hi, lo) in enumerate(pairs) if hi["kind"] == lo["kind"] == "free"]
        rest = [i for i in range(n_all) if i not in set(free)]
        keep = rng.sample(free, min(cap, len(free)))
        keep += rng.sample(rest, min(cap - len(keep), len(rest)))
        pairs = [pairs[i] for i in sorted(keep)]
    return [pair_record(question, hi, lo) for hi, lo in pairs], n_all


def after_prompt(prompt: str, response: str) -> str:
    """The response as it continues `prompt`: a plain-text prompt ("... step by step.") is followed by
    a space, as the model itself would write it; a chat prompt ends in a newline and needs none."""
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return " " + response
    return response


def pair_record(question: dict, chosen: dict, rejected: dict) -> dict:
    return {
        "question_id": question["id"],
        "dataset": question["dataset"],
        "prompt": question["prompt"],
        "messages": question["messages"],
        "chosen": after_prompt(question["prompt"], chosen["response"]),
        "rejected": after_prompt(question["prompt"], rejected["response"]),
        "chosen_tier": chosen["tier"],
        "rejected_tier": rejected["tier"],
        "chosen_kind": chosen["kind"],
        "rejected_kind": rejected["kind"],
        "chosen_id": chosen["rid"],
        "rejected_id": rejected["rid"],
        "pair_type": pair_type(chosen, rejected),
        "chosen_finished": is_finished(chosen),
        "rejected_finished": is_finished(rejected),
    }


def _with_reply(messages: list[dict], response: str) -> list[dict]:
    """Chat messages ending with the full reply; a partial assistant message (the reply's opening cue) is
    continued rather than followed by a second assistant turn."""
    if messages and messages[-1]["role"] == "assistant":
        start = messages[-1]["content"]
        return messages[:-1] + [{"role": "assistant", "content": start + after_prompt(start, response)}]
    return messages + [{"role": "assistant", "content": response}]


def sft_record(question: dict, row: dict) -> dict:
    from ..answers import format_answer_line

    # The response ends with the GOLD line: a top-tier rationale reaches the gold by definition of the
    # default rules, and a custom rule must not teach a wrong final line.
    body, _ = split_answer_line(row["text"])
    line = format_answer_line(question["gold"], question["answer_type"])
    response = f"{body} {line}" if body else line
    return {
        "question_id": question["id"],
        "dataset": question["dataset"],
        "question": question["question"],
        "gold": question["gold"],
        "answer_type": question["answer_type"],
        "prompt": question["prompt"],
        "messages": _with_reply(question["messages"], response),
        "response": after_prompt(question["prompt"], response),
        "kind": row["kind"],
        "tier": row["tier"],
        "rationale_id": row["rid"],
    }


def rank_all(questions: dict[str, dict], rows: list[dict], config: RankConfig) -> dict:
    """Rank every question. Returns {"per_question": {id: rank_question result + pairs}, "sft": [...],
    "pairs": [...]} in question order."""
    by_question: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_question[row["question_id"]].append(row)
    top = config.top_tier
    per_question, sft, pairs = {}, [], []
    for qid, question in questions.items():
        result = rank_question(question, by_question.get(qid, []), config)
        result["pairs"], result["n_pairs_uncapped"] = question_pairs(question, result["ranked"], config)
        best = [
            r for r in result["ranked"] if r["tier"] == top and body_words(r["text"]) >= config.sft_min_body_words
        ]
        if config.sft_max_per_question is not None:
            best = best[: config.sft_max_per_question]
        result["sft"] = [sft_record(question, r) for r in best]
        per_question[qid] = result
        sft += result["sft"]
        pairs += result["pairs"]
    if config.sft_balance_answers:
        sft = balance_answers(sft, config.pair_seed)
        kept = {row["rationale_id"] for row in sft}
        for result in per_question.values():
            result["sft"] = [row for row in result["sft"] if row["rationale_id"] in kept]
    return {"per_question": per_question, "sft": sft, "pairs": pairs}


def body_words(text: str) -> int:
    """Words of a rationale's reasoning, the final answer line left out."""
    return len(split_answer_line(text)[0].split())


def balance_answers(rows: list[dict], seed: int) -> list[dict]:
    """Rows of categorical answers (yes/no, choices) subsampled to the count of the rarest gold answer,
    seeded, in the original order. Numeric and free-text answers, or a single answer value, stay as they are."""
    by_answer: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_answer[str(row["gold"]).strip().lower()].append(i)
    categorical = rows and all(row["answer_type"] in ("yes_no", "choice") for row in rows)
    if not categorical or len(by_answer) < 2:
        return rows
    n = min(len(ix) for ix in by_answer.values())
    rng = random.Random(stable_seed("sft-balance", seed, n))
    keep = sorted(i for ix in by_answer.values() for i in rng.sample(ix, n))
    return [rows[i] for i in keep]


def compute_stats(questions: dict[str, dict], ranking: dict, config: RankConfig) -> dict:
    """Statistics per dataset and overall (lengths in whitespace-separated words of the response)."""
    top = config.top_tier
    datasets = sorted({q["dataset"] for q in questions.values()})

    def summary(qids: list[str]) -> dict:
        results = [ranking["per_question"][q] for q in qids]
        rows = [r for res in results for r in res["all"]]
        ranked = [r for res in results for r in res["ranked"]]
        hinted = [r for r in rows if r["kind"] != "free"]
        by_tier: dict[str, list[int]] = defaultdict(list)
        for r in ranked:
            by_tier[str(r["tier"])].append(words(r["response"]))
        tier_keys = sorted(by_tier, key=int, reverse=True)
        n = len(qids)
        return {
            "n_questions": n,
            "n_rationales": len(rows),
            "n_ranked": len(ranked),
            "kinds": dict(Counter(r["kind"] for r in rows)),
            "outcomes": dict(sorted(Counter(f"{r['kind']}/{r['outcome']}" for r in rows).items())),
            "tiers": {t: len(by_tier[t]) for t in tier_keys},
            "mean_words": {t: round(sum(by_tier[t]) / len(by_tier[t]), 1) for t in tier_keys},
            "n_excluded": sum(res["n_excluded"] for res in results),
            "n_leaks": sum(1 for r in hinted if r["leak"]),
            "leak_rate": round(sum(1 for r in hinted if r["leak"]) / len(hinted), 4) if hinted else 0.0,
            "n_leaks_filtered": sum(res["n_leaks_filtered"] for res in results),
            "n_duplicates_skipped": sum(res["n_duplicates"] for res in results),
            "n_pairs": sum(len(res["pairs"]) for res in results),
            "n_pairs_uncapped": sum(res["n_pairs_uncapped"] for res in results),
            "n_sft": sum(len(res["sft"]) for res in results),
            "share_questions_top_tier": round(
                sum(1 for res in results if any(r["tier"] == top for r in res["ranked"])) / n, 4
            )
            if n
            else 0.0,
            "share_questions_with_pair": round(sum(1 for res in results if res["pairs"]) / n, 4)
            if n
            else 0.0,
        }

    stats = summary(list(questions))
    stats["by_dataset"] = {
        d: summary([q for q, row in questions.items() if row["dataset"] == d]) for d in datasets
    }
    stats["top_tier"] = top
    stats["length_unit"] = "words"
    stats["leaks_filtered"] = config.filter_leaks
    stats["rank_config"] = config.to_dict()
    return stats
