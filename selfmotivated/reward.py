"""Stage 3: a reward model learned from the rank of the self-generated rationales (METHOD.md), and best-of-N
reranking with it (`sml rerank`).

Model: `AutoModelForSequenceClassification(num_labels=1)` on (prompt, rationale + answer). The score of a
sequence is the head's value at its last real token (by the attention mask, whatever the pad token is). A
finished response ends with the EOS token, an unfinished one (cut off at the token limit, or stored with no
answer) does not: training pairs and PPO's rollouts follow the same rule, so the score can tell text that
ended from text that ran out. Default: a LoRA adapter plus the score head (PEFT `modules_to_save`) on the SFT weights, so PPO can
share one backbone; `--method full` trains every weight.

Loss (InstructGPT, Ouyang et al. 2022, sec. 3.5): all pairs of one question are in the same batch; each
distinct response is scored once, and

    loss = mean over questions of  mean over its pairs (better b, worse w) of  -log sigmoid(r_b - r_w - m)

with margin m = margin_per_tier_gap * (tier_b - tier_w) (Llama 2's margin idea, 0 by default). All responses of a
question start with its prompt, which is encoded once for them (share_prompt, shared_prefix.py): the same
scores and gradients up to float rounding, 1.65x faster per pair on the default model's shapes.

Data: rows with question_id, prompt, chosen, rejected, chosen_tier, rejected_tier, from a `sml generate`
run folder (`rationales.load_pairs`) or a JSONL file. Held-out questions (seeded, by question id) give
pairwise accuracy, accuracy per tier gap and score distributions per tier.

Loading a saved reward model:
- `load_reward_model(folder)` handles every case below.
- `--method full` or `--save-merged`: a plain folder, `AutoModelForSequenceClassification.from_pretrained(folder)`.
- LoRA (default): an adapter folder with the score head inside (`modules_to_save`). With transformers (and
  peft installed), either
      model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
  or, explicitly,
      base = AutoModelForSequenceClassification.from_pretrained(SFT_FOLDER, num_labels=1)
      model = peft.PeftModel.from_pretrained(base, folder)
  then `model.config.pad_token_id = AutoTokenizer.from_pretrained(folder).pad_token_id`. SFT_FOLDER is
  `base_model_name_or_path` of adapter_config.json ("backbone" in reward_model.json). When the SFT model was
  itself a LoRA adapter folder, that is the folder named there: use load_reward_model, which merges it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .data import DataConfig
from .models import resolve_model
from .training import (
    Loop, TrainConfig, TrainerState, add_lora, check_max_length, deal_eval, fingerprint, fit,
    hf_progress_bars_off, length_grouped_batches, make_accelerator, make_optimizer, make_scheduler,
    plan_training_steps, prepare_out, load_rows, resolve_out, resume_state, save_model_folder, set_seed,
    settings_of, split_by_group, write_json, write_run_record,
)

log = logging.getLogger(__name__)

PAIR_KEYS = ("question_id", "prompt", "chosen", "rejected", "chosen_tier", "rejected_tier")
# the provenance-only baseline's scores
PROVENANCE = {"gold": 2, "free": 1, "policy": 1, "wrong": 0, "edited": 0}
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}
REWARD_META = "reward_model.json"


@dataclass
class RewardConfig(TrainConfig):
    """`sml reward`: train the scalar reward model on the ranked rationales."""

    model: str | None = field(default=None, metadata={
        "help": "model to start from: the SFT model (default: RUN_DIR/sft/model) or the base model; a folder, "
                "a known name or a LoRA adapter folder (merged)"})
    method: str = field(default="lora", metadata={
        "help": "lora (adapter + score head on the start model, so PPO can share the backbone) or full",
        "choices": ["full", "lora"]})
    batch_size: int = field(default=4, metadata={
        "help": "questions per micro-batch per process (all distinct responses of each question go in)"})
    margin_per_tier_gap: float = field(default=0.0, metadata={
        "help": "margin in the pairwise loss per tier of difference: -logsigmoid(r_b - r_w - m * gap)"})
    policy_pairs: str | None = field(default=None, metadata={
        "help": "also train on pairs from the SFT model's own checked samples: a finished sft_round2 folder "
                "(samples.jsonl, kept.jsonl; in `sml run`: 'sft_round2'). Each question's right samples above "
                "its wrong ones (pair type policy>policy): the population PPO shows the reward model"})
    policy_pairs_per_question: int = field(default=16, metadata={
        "help": "at most this many policy pairs a question (a seeded subsample)"})
    answer_edits: int = field(default=0, metadata={
        "help": "also train on edited copies of the right responses (numbers): per right response up to this many "
                "copies with its answer changed to a wrong one everywhere in the text, ranked below it (pair type "
                "right>edited; the negated answer first when the golds have both signs): the answer alone "
                "separates such a pair (rationales/edits.py). 0: none"})
    share_prompt: bool = field(default=True, metadata={
        "help": "encode a question's prompt once for all its responses (the same scores and gradients up to float "
                "rounding, tested; with lora_dropout > 0 the responses share one dropout draw on the prompt); "
                "one process without gradient checkpointing, else every response is encoded with its prompt"})
    save_merged: bool = field(default=False, metadata={
        "help": "LoRA: save the adapter merged into a full sequence-classification folder"})
    bon_n: int = field(default=0, metadata={
        "help": "after training, best-of-N on test questions with N samples per question (0: skip)"})
    bon_dataset: str | None = field(default=None, metadata={"help": "dataset of the best-of-N evaluation"})
    bon_limit: int = field(default=50, metadata={"help": "test questions in the best-of-N evaluation"})
    bon_temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the best-of-N samples"})
    bon_max_new_tokens: int = field(default=256, metadata={"help": "new tokens per best-of-N sample"})
    data_dir: str | None = field(default=None, metadata={"help": "folder of the shared datasets (best-of-N)"})
    # -- the validity report (validity.py): the reward model on fresh free samples of held-out training questions
    validity_dataset: str | None = field(default=None, metadata={
        "help": "dataset whose training questions the validity report samples (empty: no report)"})
    validity_offset: int = field(default=0, metadata={
        "help": "skip this many training questions first (those the rationales and PPO use)"})
    validity_questions: int = field(default=50, metadata={"help": "held-out training questions sampled (0: no report)"})
    validity_samples: int = field(default=4, metadata={"help": "fresh samples per question"})
    validity_temperature: float = field(default=1.0, metadata={"help": "their temperature (PPO's)"})
    validity_max_new_tokens: int = field(default=256, metadata={"help": "their token limit (PPO's)"})
    validity_templates: str | None = field(default=None, metadata={"help": "prompt templates file (PPO's)"})
    validity_policy: str | None = field(default=None, metadata={
        "help": "the model that samples (default: the model the reward model starts from, the SFT model)"})
    validity_data: dict = field(default_factory=dict, metadata={
        "cli": False, "help": "further DataConfig keys of the validity dataset (task_options, n_train, ...)"})

    def __post_init__(self):
        self.check()
        for name in ("validity_offset", "validity_questions", "validity_samples", "validity_max_new_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.validity_temperature <= 0:
            raise ValueError(f"validity_temperature must be > 0 (fresh samples), got {self.validity_temperature}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.answer_edits < 0:
            raise ValueError(f"answer_edits must be >= 0, got {self.answer_edits}")
        if self.policy_pairs_per_question < 1:
            raise ValueError(f"policy_pairs_per_question must be >= 1, got {self.policy_pairs_per_question}")
        if self.bon_n < 0:
            raise ValueError(f"bon_n must be >= 0, got {self.bon_n}")
        if self.bon_n and not self.bon_dataset:
            raise ValueError("bon_n > 0 needs bon_dataset (the test questions to rerank)")
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LR[self.method]


# ----------------------------------------------------------------------------------------------------
# Data: pairs -> question groups -> token ids


@dataclass
class QuestionGroup:
    """One question with its distinct responses, their tiers and the (better, worse) pairs between them."""

    question_id: str
    prompt: str
    responses: list[str]
    tiers: list[int]
    pairs: list[tuple[int, int]]  # indices into responses
    finished: list[bool] = field(default_factory=list)  # per response: ended (scored at an EOS token)
    kinds: list[str] = field(default_factory=list)  # per response: free, gold, wrong ("?" when not given)


def load_pair_rows(config: RewardConfig) -> list[dict]:
    """The rank's pairs (or a pair file), plus the policy's own pairs when `policy_pairs` names them, plus
    answer-edited copies of the right responses when `answer_edits` asks for them."""
    from .rationales import load_pairs

    rows = load_rows(config.train_file, config.run_dir, PAIR_KEYS, load_pairs, "pair",
                     "a reward model needs questions with rationales in at least two tiers (e.g. a correct "
                     "and a wrong one)")
    if config.policy_pairs:
        from .expert_iteration import policy_pairs

        rows += merge_policy_pairs(rows, policy_pairs(config.policy_pairs, config.policy_pairs_per_question,
                                                      config.seed))
    if config.answer_edits:
        from .rationales.edits import answer_edit_pairs

        rows += merge_policy_pairs(rows, answer_edit_pairs(rows, config.answer_edits, config.seed))
    return rows


POLICY_PROMPT = " (policy prompt)"  # suffix of a question's id when its policy pairs have another prompt


def merge_policy_pairs(rows: Sequence[dict], extra: Sequence[dict]) -> list[dict]:
    """The extra (policy) pairs that fit beside `rows`: a pair is left out when one of its texts already has
    another tier in that question (a hinted rationale the sampler happened to repeat, or a free sample the rank
    demoted: policy pairs take the answer checker's verdict, as PPO's checker reward and the validity report
    do), and a question whose prompt differs from the rank's gets a question id of its own (one question, one
    prompt; the held-out split still keeps it with the rank's)."""
    tiers: dict[str, dict[str, int]] = {}
    prompts: dict[str, str] = {}
    for r in rows:
        qid = str(r["question_id"])
        prompts.setdefault(qid, r["prompt"])
        tiers.setdefault(qid, {}).update({r["chosen"].strip(): int(r["chosen_tier"]),
                                          r["rejected"].strip(): int(r["rejected_tier"])})
    kept = []
    for r in extra:
        qid = str(r["question_id"])
        if qid in prompts and prompts[qid] != r["prompt"]:
            r = {**r, "question_id": qid + POLICY_PROMPT}
            qid = r["question_id"]
        known = tiers.get(qid, {})
        if known.get(r["chosen"].strip(), r["chosen_tier"]) != r["chosen_tier"] or \
                known.get(r["rejected"].strip(), r["rejected_tier"]) != r["rejected_tier"]:
            continue
        kept.append(r)
    return kept


def group_pairs(rows: Sequence[dict]) -> list[QuestionGroup]:
    """Group pair rows by question, each distinct response once. Errors name the row: a tie or reversed
    tiers, a response given two tiers, or one question with two prompts."""
    groups: dict[str, QuestionGroup] = {}
    index: dict[str, dict[str, int]] = {}
    for i, row in enumerate(rows):
        where = row.get("_where", f"pair row {i}")
        missing = [k for k in PAIR_KEYS if k not in row]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing} (required: {list(PAIR_KEYS)})")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        try:
            better, worse = int(row["chosen_tier"]), int(row["rejected_tier"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: chosen_tier and rejected_tier must be integers, got "
                             f"{row['chosen_tier']!r}, {row['rejected_tier']!r}") from None
        if better <= worse:
            raise ValueError(f"{where}: chosen_tier {better} is not above rejected_tier {worse} (ties are not pairs)")
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"{where}: chosen and rejected are the same text")
        qid = str(row["question_id"])
        group = groups.get(qid)
        if group is None:
            group = groups[qid] = QuestionGroup(qid, row["prompt"], [], [], [])
            index[qid] = {}
        elif group.prompt != row["prompt"]:
            raise ValueError(f"{where}: question {qid!r} appears with two different prompts")
        ids = []
        # A pair file without the flags holds finished texts (a user's chosen/rejected answers).
        for text, tier, done, kind in (
                (row["chosen"], better, bool(row.get("chosen_finished", True)), row.get("chosen_kind", "?")),
                (row["rejected"], worse, bool(row.get("rejected_finished", True)), row.get("rejected_kind", "?"))):
            j = index[qid].get(text)
            if j is None:
                j = index[qid][text] = len(group.responses)
                group.responses.append(text)
                group.tiers.append(tier)
                group.finished.append(done)
                group.kinds.append(str(kind))
            elif group.tiers[j] != tier:
                raise ValueError(f"{where}: a response of question {qid!r} has tier {tier} here and "
                                 f"{group.tiers[j]} in an earlier row")
            ids.append(j)
        if tuple(ids) not in group.pairs:
            group.pairs.append((ids[0], ids[1]))
    return list(groups.values())


def encode_scored(tokenizer, prompt_ids: list[int], response: str, finished: bool = True) -> list[int]:
    """prompt + response ids (trailing pad tokens of the text removed), then EOS when the response finished:
    the last token, where the score is read, is EOS for a finished response and the last word of one cut off."""
    ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]
    while len(ids) > 1 and ids[-1] in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        ids.pop()
    if finished and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def tokenize_groups(groups: Sequence[QuestionGroup], tokenizer, max_length: int, too_long: str = "drop"):
    """(items, counts). Item: question_id, seqs (token ids per response), tiers, pairs.

    A response longer than max_length is dropped with its pairs (or an error with too_long="error");
    a question left with no pair is dropped. Counts say how many of each were dropped."""
    items, dropped = [], {"responses": 0, "pairs": 0, "questions": 0}
    for g in groups:
        prompt_ids = tokenizer(g.prompt, add_special_tokens=False)["input_ids"]
        done = g.finished or [True] * len(g.responses)
        seqs = [encode_scored(tokenizer, prompt_ids, r, f) for r, f in zip(g.responses, done)]
        keep = [len(s) <= max_length for s in seqs]
        if not all(keep) and too_long == "error":
            n = max(len(s) for s in seqs)
            raise ValueError(f"question {g.question_id!r}: a response is {n} tokens with its prompt, longer than "
                             f"max_length={max_length} (raise --max-length or use --too-long drop)")
        pairs = [(b, w) for b, w in g.pairs if keep[b] and keep[w]]
        dropped["responses"] += keep.count(False)
        dropped["pairs"] += len(g.pairs) - len(pairs)
        if not pairs:
            dropped["questions"] += 1
            continue
        used = sorted({j for p in pairs for j in p})  # responses in no remaining pair are not needed
        remap = {j: k for k, j in enumerate(used)}
        kinds = g.kinds or ["?"] * len(g.responses)
        items.append({"question_id": g.question_id, "seqs": [seqs[j] for j in used],
                      "tiers": [g.tiers[j] for j in used], "pairs": [(remap[b], remap[w]) for b, w in pairs],
                      "kinds": [kinds[j] for j in used]})
    return items, dropped


def collate_groups(items: Sequence[dict], pad_id: int, margin_per_tier_gap: float = 0.0, device=None) -> dict:
    """All responses of the questions, right-padded (S, T), and their pairs as index tensors (P,)."""
    import torch

    seqs = [s for it in items for s in it["seqs"]]
    S, T = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((S, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((S, T), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention_mask[i, :len(s)] = 1
    better, worse, question, gap, tiers = [], [], [], [], []
    offset = 0
    for q, it in enumerate(items):
        for b, w in it["pairs"]:
            better.append(offset + b)
            worse.append(offset + w)
            question.append(q)
            gap.append(it["tiers"][b] - it["tiers"][w])
        tiers += it["tiers"]
        offset += len(it["seqs"])
    gap_t = torch.tensor(gap, dtype=torch.float32)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "better": torch.tensor(better),
             "worse": torch.tensor(worse), "question": torch.tensor(question), "gap": gap_t,
             "margin": margin_per_tier_gap * gap_t, "tiers": torch.tensor(tiers)}
    batch = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
    batch["n_questions"] = len(items)
    return batch


def group_padding_fraction(items: Sequence[dict], batches: Sequence[Sequence[int]]) -> float:
    """Share of padding when the responses of each batch of questions are padded to the batch's longest."""
    lengths = [[len(s) for i in b for s in items[i]["seqs"]] for b in batches]  # per batch, per sequence
    padded = sum(len(ls) * max(ls) for ls in lengths if ls)
    return 1 - sum(map(sum, lengths)) / padded if padded else 0.0


def _score_head(model):
    """The per-token score head of a sequence-classification model (`score`, wrapped by PEFT or not)."""
    named = [(n, m) for n, m in model.named_modules() if n == "score" or n.endswith(".score")]
    return min(named, key=lambda nm: len(nm[0]))[1] if named else None


def reward_scores(model, input_ids, attention_mask):
    """Score of each right-padded sequence, (S,), read at its last real token by the attention mask.

    transformers pools at the last token that is not the pad token, which skips a final EOS whenever the
    tokenizer pads with EOS; the head's per-token output is taken from a hook instead, so EOS is scored."""
    import torch

    head = _score_head(model)
    captured = {}
    handle = head.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o)) if head else None
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    per_token = captured.get("logits")
    if per_token is None or per_token.dim() != 3:  # an architecture without a per-token head: its own pooling
        return out.logits[:, 0].float()
    last = attention_mask.long().sum(-1) - 1  # (S,) right padding: the last real position
    return per_token[torch.arange(per_token.shape[0], device=per_token.device), last, 0].float()


def reward_scores_shared(model, items: Sequence[dict], pad_id: int, device=None):
    """`reward_scores` of every response of the questions (items' "seqs", in order), (S,), with the tokens all
    responses of a question start with (its prompt) encoded once for them (shared_prefix.py). Returns (scores,
    computed real tokens, computed positions)."""
    from .shared_prefix import grouped_last_hidden

    head = _score_head(model)
    if head is None:
        raise ValueError("sharing the prompt needs a per-token score head (`score`); use share_prompt false")
    groups = [it["seqs"] for it in items]
    hidden, tokens, positions = grouped_last_hidden(model, groups, pad_id, device, with_counts=True)  # (S, H)
    return head(hidden)[:, 0].float(), tokens, positions


def reward_loss_shared(model, items: Sequence[dict], pad_id: int, margin_per_tier_gap: float = 0.0, device=None):
    """`reward_loss` on the same questions, each prompt encoded once for its responses (RewardConfig.share_prompt).
    Its "tokens"/"positions" stats count what was computed (the prompt once per question)."""
    batch = collate_groups(items, pad_id, margin_per_tier_gap, device)  # the pairs; the padded ids go unused
    scores, tokens, positions = reward_scores_shared(model, items, pad_id, device)
    losses, diff = pairwise_losses(scores, batch)
    loss = question_mean(losses, batch["question"], batch["n_questions"])
    stats = {"loss": loss.item(), "accuracy": (diff > 0).float().mean().item(), "tokens": float(tokens),
             "positions": float(positions), "pairs": float(diff.numel())}
    return loss, stats


def pairwise_losses(scores, batch: dict):
    """Per-pair loss -logsigmoid(r_b - r_w - margin), (P,), and the margin-free difference r_b - r_w."""
    import torch.nn.functional as F

    diff = scores[batch["better"]] - scores[batch["worse"]]  # (P,)
    return -F.logsigmoid(diff - batch["margin"]), diff


def question_mean(values, question, n_questions: int):
    """Mean over questions of the mean over each question's pairs (InstructGPT's per-prompt weighting)."""
    import torch

    sums = torch.zeros(n_questions, dtype=values.dtype, device=values.device).index_add_(0, question, values)
    counts = torch.zeros(n_questions, dtype=values.dtype, device=values.device).index_add_(
        0, question, torch.ones_like(values))
    return (sums / counts).mean()


def reward_loss(model, batch: dict):
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])
    losses, diff = pairwise_losses(scores, batch)
    loss = question_mean(losses, batch["question"], batch["n_questions"])
    stats = {"loss": loss.item(), "accuracy": (diff > 0).float().mean().item(),
             "tokens": float(batch["attention_mask"].sum()), "positions": float(batch["attention_mask"].numel()),
             "pairs": float(diff.numel())}
    return loss, stats


# ----------------------------------------------------------------------------------------------------
# Held-out metrics


def pair_metrics(rows: Sequence[dict], scored: Sequence[tuple[int, float]]) -> dict:
    """Metrics from pair rows {question, loss, diff, gap, better_tier, worse_tier} and (tier, score) pairs."""
    def acc(rs):  # a tie counts half
        return sum(1.0 if r["diff"] > 0 else 0.5 if r["diff"] == 0 else 0.0 for r in rs) / len(rs) if rs else None

    by_q: dict = {}
    for r in rows:
        by_q.setdefault(r["question"], []).append(r["loss"])
    val_loss = statistics.fmean(statistics.fmean(v) for v in by_q.values()) if by_q else float("nan")
    gaps = sorted({r["gap"] for r in rows})
    tier_pairs = sorted({(r["better_tier"], r["worse_tier"]) for r in rows}, reverse=True)
    by_tier: dict = {}
    for tier, score in scored:
        by_tier.setdefault(tier, []).append(score)
    return {
        "val_loss": val_loss,
        "pairwise_accuracy": acc(rows),
        "n_pairs": len(rows),
        "n_questions": len(by_q),
        "accuracy_by_tier_gap": {str(g): {"accuracy": acc([r for r in rows if r["gap"] == g]),
                                          "n_pairs": sum(1 for r in rows if r["gap"] == g)} for g in gaps},
        "accuracy_by_tiers": {f"{b}>{w}": acc([r for r in rows if (r["better_tier"], r["worse_tier"]) == (b, w)])
                              for b, w in tier_pairs},
        "score_by_tier": {str(t): describe(v) for t, v in sorted(by_tier.items(), reverse=True)},
        "accuracy_by_pair_type": {t: {"accuracy": acc([r for r in rows if r.get("pair_type") == t]),
                                      "n_pairs": sum(1 for r in rows if r.get("pair_type") == t)}
                                  for t in sorted({r.get("pair_type", "?>?") for r in rows})},
        # What a scorer that knows only how each rationale was made (gold-hinted > free > wrong-hinted)
        # gets on the same pairs: a reward model near it has learned provenance, not correctness.
        "provenance_baseline_accuracy": acc([{"diff": r.get("provenance_diff", 0)} for r in rows]),
    }


def describe(values: Sequence[float]) -> dict:
    v = sorted(values)

    def q(p):
        return v[min(len(v) - 1, max(0, round(p * (len(v) - 1))))]

    return {"n": len(v), "mean": statistics.fmean(v), "std": statistics.pstdev(v), "min": v[0], "p10": q(0.1),
            "p50": q(0.5), "p90": q(0.9), "max": v[-1]}


def evaluate_pairs(model, items: Sequence[dict], batches: Sequence[list[int]], accelerator, pad_id: int,
                   margin_per_tier_gap: float, share_prompt: bool = False) -> dict:
    """Held-out metrics; each process scores its share of the question batches, results are gathered."""
    from accelerate.utils import gather_object

    rows, scored = [], []
    for b, counts in deal_eval(batches, accelerator.num_processes, accelerator.process_index):
        group = [items[i] for i in b]
        batch = collate_groups(group, pad_id, margin_per_tier_gap, accelerator.device)
        if share_prompt:
            scores = reward_scores_shared(model, group, pad_id, accelerator.device)[0]
        else:
            scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])
        losses, diff = pairwise_losses(scores, batch)
        if not counts:
            continue
        tiers = batch["tiers"].tolist()
        kinds = [k for it in group for k in it.get("kinds", ["?"] * len(it["seqs"]))]
        for k in range(diff.numel()):
            bi, wi = batch["better"][k].item(), batch["worse"][k].item()
            rows.append({"question": group[batch["question"][k].item()]["question_id"], "loss": losses[k].item(),
                         "diff": diff[k].item(), "gap": int(batch["gap"][k].item()), "better_tier": tiers[bi],
                         "worse_tier": tiers[wi], "pair_type": f"{kinds[bi]}>{kinds[wi]}",
                         "provenance_diff": PROVENANCE.get(kinds[bi], 0) - PROVENANCE.get(kinds[wi], 0)})
        scored += list(zip(tiers, scores.tolist()))
    if accelerator.num_processes > 1:
        rows, scored = gather_object(rows), gather_object(scored)
    return pair_metrics(rows, scored)


# ----------------------------------------------------------------------------------------------------
# Models: load a scoring backbone, load a saved reward model, score texts


def load_scoring_backbone(name_or_path: str, trust_remote_code: bool = False, dtype: str = "float32"):
    """(model, tokenizer): a sequence-classification model (num_labels=1) from a causal LM: its LM head is
    dropped and a new score head added. An adapter folder (a LoRA SFT) is merged into its base first."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import _pick_dtype

    resolved = Path(resolve_model(name_or_path)) if name_or_path else None
    torch_dtype = _pick_dtype(dtype, "cpu")
    if resolved is not None and (resolved / "adapter_config.json").is_file():
        from .models import load_model

        causal, tokenizer = load_model(str(resolved), dtype="float32", device="cpu",
                                       trust_remote_code=trust_remote_code)
        causal = causal.merge_and_unload()
        config = causal.config
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
        missing, unexpected = model.load_state_dict(causal.state_dict(), strict=False)
        if any(not k.startswith("score.") for k in missing):
            raise ValueError(f"cannot build a scoring model from {name_or_path}: weights missing after transfer "
                             f"({[k for k in missing if not k.startswith('score.')][:5]})")
        model.to(torch_dtype)
    else:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its report of the new score head is expected; we check it below
        try:
            with hf_progress_bars_off():
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    str(resolved), num_labels=1, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                    output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = [k for k in info.get("missing_keys", ()) if not k.startswith("score.")]
        if missing:
            raise ValueError(f"cannot build a scoring model from {name_or_path}: {len(missing)} backbone weights "
                             f"are not in the checkpoint (e.g. {sorted(missing)[:3]})")
        tokenizer = AutoTokenizer.from_pretrained(str(resolved), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_reward_model(path: str | Path, device: str = "cpu", dtype: str = "float32",
                      trust_remote_code: bool = False):
    """(model, tokenizer) of a saved reward model folder: a full/merged sequence-classification folder, or a
    LoRA adapter (with the score head) applied to its backbone (from reward_model.json or adapter_config)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import _pick_dtype

    folder = Path(path)
    if (folder / "config.json").is_file():
        with hf_progress_bars_off():
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, dtype=_pick_dtype(dtype, device), trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    elif (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        meta = json.loads((folder / REWARD_META).read_text()) if (folder / REWARD_META).is_file() else {}
        backbone = meta.get("backbone") or json.loads((folder / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        if not backbone:
            raise ValueError(f"{folder}: no backbone recorded ({REWARD_META} or base_model_name_or_path)")
        model, tokenizer = load_scoring_backbone(backbone, trust_remote_code, dtype)
        try:
            model = PeftModel.from_pretrained(model, str(folder))
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            raise ValueError(f"reward adapter {folder} does not match its backbone {backbone} (different layer "
                             f"sizes): load it with the model it was trained on. Details: {err}") from None
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        raise FileNotFoundError(f"{folder} is not a reward model folder (no config.json or adapter_config.json)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def score_texts(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8,
                max_length: int | None = None, finished: Sequence[bool] | None = None) -> list[float]:
    """Reward of each (prompt, response), in input order. finished[i] False: response i was cut off at the
    token limit (scored without EOS; default: every response finished). A sequence longer than max_length
    (default: the model's context) keeps its last max_length tokens: the score is read at the end, so only
    the start of the prompt is lost (logged)."""
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    finished = list(finished) if finished is not None else [True] * len(responses)
    max_length = max_length or getattr(model.config, "max_position_embeddings", None) or 10**9
    cache: dict[str, list[int]] = {}
    seqs, cut = [], 0
    for p, r, done in zip(prompts, responses, finished, strict=True):
        if p not in cache:
            cache[p] = tokenizer(p, add_special_tokens=False)["input_ids"]
        ids = encode_scored(tokenizer, cache[p], r, done)
        if len(ids) > max_length:
            ids, cut = ids[-max_length:], cut + 1
        seqs.append(ids)
    if cut:
        log.warning("%d of %d sequences were longer than %d tokens; their start was cut", cut, len(seqs), max_length)
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate_groups([{"seqs": [seqs[i] for i in idx], "tiers": [0] * len(idx), "pairs": []}],
                                   tokenizer.pad_token_id, device=device)
            for i, s in zip(idx, reward_scores(model, batch["input_ids"], batch["attention_mask"]).tolist()):
                out[i] = s
    return out


# ----------------------------------------------------------------------------------------------------
# The stage


def resolve_start_model(config: RewardConfig) -> str:
    if config.model:
        return config.model
    if config.run_dir and (Path(config.run_dir) / "sft" / "model").is_dir():
        return str(Path(config.run_dir) / "sft" / "model")
    raise ValueError("reward needs a model to start from: pass --model (the SFT model folder, or the base model)")


def build_reward_model(config: RewardConfig, start_model: str):
    """(model, tokenizer, backbone folder): a score head on `start_model`, with a fresh LoRA adapter (the head
    in modules_to_save) unless method == full."""
    model, tokenizer = load_scoring_backbone(start_model, config.trust_remote_code)
    check_max_length(model, config.max_length)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # The backbone as a folder (known names resolved): recorded in the saved folder, and as the adapter's
    # base so PeftModel.from_pretrained finds the right weights.
    resolved = resolve_model(start_model)
    backbone = str(Path(resolved).resolve()) if Path(resolved).exists() else resolved
    if config.method == "lora":
        model = add_lora(model, config, task_type="SEQ_CLS", modules_to_save=["score"])
        model.peft_config["default"].base_model_name_or_path = backbone
    return model, tokenizer, backbone


def run_reward(config: RewardConfig) -> dict:
    """Train the reward model, save `OUT/model`, return held-out metrics (also in `OUT/run.json`)."""
    import torch

    out = resolve_out(config, "reward")
    start_model = resolve_start_model(config)
    accelerator = make_accelerator(config)
    settings = settings_of(config)
    resume_from = prepare_out(out, settings, config.resume, accelerator)

    rows = load_pair_rows(config)  # before the model: bad input fails fast
    groups = group_pairs(rows)
    set_seed(config.seed)
    model, tokenizer, backbone = build_reward_model(config, start_model)

    # -- data: pairs -> questions -> held-out questions -> batches of whole questions
    items, dropped = tokenize_groups(groups, tokenizer, config.max_length, config.too_long)
    if not items:
        raise ValueError(f"every pair of the {len(groups)} questions was dropped: longer than max_length="
                         f"{config.max_length} tokens")
    # One question stays on one side, also when its policy pairs came under a prompt of their own.
    train_idx, val_idx = split_by_group([it["question_id"].removesuffix(POLICY_PROMPT) for it in items],
                                        config.val_fraction, config.seed)
    train, val = [items[i] for i in train_idx], [items[i] for i in val_idx]
    cost = [sum(len(s) for s in it["seqs"]) for it in train]  # bucket questions by their total tokens
    plan_epoch, plan = plan_training_steps(train, cost, config, accelerator, "questions")
    steps_per_epoch, total_steps = plan["steps_per_epoch"], plan["total_steps"]
    pad_id = tokenizer.pad_token_id
    # The shared-prompt pass calls the decoder body directly: DDP's forward (gradient sync) and gradient
    # checkpointing (no cache in training) need the model's own forward.
    share = config.share_prompt and accelerator.num_processes == 1 and not config.gradient_checkpointing

    def loss_fn(model, group):
        if share:
            return reward_loss_shared(model, group, pad_id, config.margin_per_tier_gap, accelerator.device)
        return reward_loss(model, collate_groups(group, pad_id, config.margin_per_tier_gap, accelerator.device))

    val_batches = length_grouped_batches([sum(len(s) for s in it["seqs"]) for it in val], config.batch_size,
                                         config.seed, 0)

    def evaluate(model) -> dict:
        return evaluate_pairs(model, val, val_batches, accelerator, pad_id, config.margin_per_tier_gap, share)

    optimizer = make_optimizer(model, config, config.learning_rate)
    scheduler = make_scheduler(optimizer, config, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = TrainerState(data_fingerprint=fingerprint([[it["seqs"], it["pairs"]] for it in train]),
                         batches_per_step=accelerator.num_processes * config.grad_accum)
    if resume_from is not None:
        state = resume_state(accelerator, resume_from, state, out)
    elif val:
        model.eval()
        with torch.no_grad():
            state.evals.append({"step": 0, **evaluate(model), "best": False})  # the start, for the record

    n_pairs = [len(it["pairs"]) for it in items]
    data = {"pair_rows": len(rows), "questions": len(groups), "dropped_too_long": dropped,
            "train_questions": len(train), "val_questions": len(val),
            "train_pairs": sum(len(it["pairs"]) for it in train), "val_pairs": sum(len(it["pairs"]) for it in val),
            "pairs_per_question": {"min": min(n_pairs), "mean": round(statistics.fmean(n_pairs), 2),
                                   "max": max(n_pairs)},
            "tier_counts": dict(Counter(str(t) for it in items for t in it["tiers"])),
            **plan, "planned_padding_fraction": round(group_padding_fraction(
                train, length_grouped_batches(cost, config.batch_size, config.seed, 0)), 4)}
    write_run_record(out, "reward", settings, "running", data, {}, state, accelerator)

    model_dir = out / "model"
    meta = {"backbone": backbone, "backbone_as_given": start_model, "method": config.method,
            "max_length": config.max_length,
            "score": "value of the score head at the last token; sequences right-padded, trailing pad removed"}

    def save_model(m) -> None:
        save_model_folder(accelerator, m, tokenizer, model_dir, extra_files={REWARD_META: meta})

    loop = Loop(plan_epoch=plan_epoch, loss_fn=loss_fn, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                evaluate=evaluate if val else None, save_model=save_model)
    state = fit(accelerator, model, optimizer, scheduler, loop, state, config, out)
    finished = state.step >= total_steps or state.stopped_early

    if finished and config.method == "lora" and config.save_merged and accelerator.is_main_process:
        merge_reward_folder(model_dir)
    accelerator.wait_for_everyone()
    metrics = reward_metrics(state, steps_per_epoch, config.keep_best, model_dir if finished else None)
    status = "finished" if finished else "stopped"
    write_run_record(out, "reward", settings, status, data, metrics, state, accelerator)
    if finished and config.validity_dataset and config.validity_questions and accelerator.is_main_process:
        metrics["validity"] = reward_validity_report(config, out, model_dir, start_model, metrics.get("heldout"))
        write_run_record(out, "reward", settings, status, data, metrics, state, accelerator)
    if finished and config.bon_n and accelerator.is_main_process:
        # Generation runs on the main process only, after the last collective (no barrier can time out).
        rerank = RerankConfig(reward_model=str(model_dir), out=str(out / "best_of_n"), n=config.bon_n,
                              temperature=config.bon_temperature, max_new_tokens=config.bon_max_new_tokens,
                              seed=config.seed, progress=config.progress,
                              data=DataConfig(dataset=config.bon_dataset, split="test", limit=config.bon_limit,
                                              data_dir=config.data_dir))
        metrics["best_of_n"] = run_rerank(rerank)
        write_run_record(out, "reward", settings, status, data, metrics, state, accelerator)
    return metrics


def reward_validity_report(config: RewardConfig, out: Path, model_dir: Path, start_model: str,
                           heldout: dict | None) -> dict:
    """Write OUT/validity.json: the reward model's AUROC against the answer checker on fresh samples of the
    held-out training questions (see validity.py)."""
    from .data import load_examples
    from .validity import run_validity

    first = config.validity_offset
    data = DataConfig(**{"data_dir": config.data_dir, **config.validity_data, "dataset": config.validity_dataset,
                         "split": "train", "limit": first + config.validity_questions})
    examples = load_examples(data)[first:]
    if not examples:
        raise ValueError(f"validity_dataset {config.validity_dataset!r} has no training questions after the first "
                         f"{first} (validity_offset): nothing held out to sample")
    return run_validity(out, model_dir, config.validity_policy or start_model, examples, heldout,
                        n=config.validity_samples, temperature=config.validity_temperature,
                        max_new_tokens=config.validity_max_new_tokens, prompt="zero_shot", chat="auto",
                        templates=config.validity_templates, seed=config.seed, progress=config.progress)


def merge_reward_folder(folder: Path) -> None:
    """Replace a reward adapter folder by a full sequence-classification folder with the adapter merged."""
    model, tokenizer = load_reward_model(folder)
    merged = model.merge_and_unload()
    tmp = folder.with_name(folder.name + ".merged.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with hf_progress_bars_off():
        merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta = json.loads((folder / REWARD_META).read_text()) if (folder / REWARD_META).is_file() else {}
    write_json(tmp / REWARD_META, {**meta, "merged": True})
    shutil.rmtree(folder)
    os.replace(tmp, folder)


def reward_metrics(state: TrainerState, steps_per_epoch: int, keep_best: bool, model_dir: Path | None) -> dict:
    """The held-out metrics of the saved model (the best evaluation with keep_best, else the last)."""
    evals = [e for e in state.evals if e["step"] > 0]
    chosen = None
    if evals:
        chosen = next((e for e in reversed(evals) if e["best"]), evals[-1]) if keep_best else evals[-1]
    start = state.evals[0] if state.evals and state.evals[0]["step"] == 0 else None
    return {
        "heldout": {k: v for k, v in chosen.items() if k not in ("best", "epoch")} if chosen else None,
        "heldout_start": {"pairwise_accuracy": start["pairwise_accuracy"], "val_loss": start["val_loss"]}
        if start else None,
        "steps": state.step,
        "epochs": round(state.step / steps_per_epoch, 3),
        "stopped_early": state.stopped_early,
        "train_tokens": state.tokens,
        "tokens_per_s": round(state.tokens / state.seconds, 1) if state.seconds else None,
        "padding_fraction": round(1 - state.tokens / state.padded_positions, 4) if state.padded_positions else None,
        "train_seconds": round(state.seconds, 2),
        "model_dir": str(model_dir) if model_dir else None,
    }


def format_reward_metrics(m: dict) -> str:
    """Human summary printed by `sml reward`."""
    lines = []
    h = m.get("heldout")
    if h:
        lines.append(f"held-out pairwise accuracy {h['pairwise_accuracy']:.3f} ({h['n_pairs']} pairs, "
                     f"{h['n_questions']} questions), loss {h['val_loss']:.4f}")
        for gap, v in h["accuracy_by_tier_gap"].items():
            lines.append(f"  tier gap {gap}: accuracy {v['accuracy']:.3f} ({v['n_pairs']} pairs)")
        for tier, d in h["score_by_tier"].items():
            lines.append(f"  tier {tier}: score mean {d['mean']:+.3f} sd {d['std']:.3f} "
                         f"p10 {d['p10']:+.3f} p50 {d['p50']:+.3f} p90 {d['p90']:+.3f} (n={d['n']})")
    else:
        lines.append("no held-out questions (val_fraction=0)")
    lines.append(f"{m['steps']} steps, {m['tokens_per_s']} tokens/s, padding {m['padding_fraction']}; "
                 f"model: {m['model_dir']}")
    if m.get("validity"):
        from .validity import format_validity

        lines.append(format_validity(m["validity"]))
    if m.get("best_of_n"):
        lines.append(format_rerank_metrics(m["best_of_n"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Best-of-N reranking (`sml rerank`)


@dataclass
class RerankConfig:
    """`sml rerank`: sample N answers per test question with the policy, keep the reward model's favourite."""

    reward_model: str | None = field(default=None, metadata={"help": "reward model folder (from `sml reward`)"})
    policy: str | None = field(default=None, metadata={
        "help": "model that samples the answers (default: the reward model's backbone, i.e. the SFT model)"})
    out: str | None = field(default=None, metadata={"help": "output folder (rerank.jsonl, rerank_metrics.json)"})
    n: int = field(default=8, metadata={"help": "samples per question"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold"})
    max_new_tokens: int = field(default=256, metadata={"help": "new tokens per sample"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    prompt: str = field(default="zero_shot", metadata={"help": "zero_shot or few_shot chain-of-thought",
                                                       "choices": ["zero_shot", "few_shot"]})
    chat: str = field(default="auto", metadata={"help": "use the chat template: auto, always or never",
                                                "choices": ["auto", "always", "never"]})
    templates: str | None = field(default=None, metadata={"help": "JSON file overriding our prompt templates"})
    batch_size: int = field(default=64, metadata={"help": "sequences decoded at once"})
    score_batch_size: int = field(default=8, metadata={"help": "sequences scored at once"})
    backend: str = field(default="engine", metadata={"help": "generation backend: engine or hf",
                                                     "choices": ["engine", "hf"]})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    data: DataConfig = field(default_factory=lambda: DataConfig(split="test"), metadata={"cli": False})

    def __post_init__(self):
        if isinstance(self.data, dict):
            from .config import build_config

            self.data = build_config(DataConfig, {"split": "test", **self.data}, "rerank.data")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


def best_of_n(examples: Sequence, samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
              check: Callable | None = None) -> tuple[list[dict], dict]:
    """Per-question rows and accuracies of: the first sample, the majority vote over extracted answers
    (ties: the answer seen first), the reward model's top-scored sample, and any sample (oracle, pass@N).

    check(text, example) -> (prediction or None, correct); default: the project's answer checker."""
    if check is None:
        from .answers import answers_match, extract_answer

        def check(text, ex):
            pred = extract_answer(text, ex.answer_type, ex.choices)
            return pred, pred is not None and answers_match(pred, ex.gold, ex.answer_type)

    rows = []
    for ex, texts, ss in zip(examples, samples, scores, strict=True):
        if not texts:
            raise ValueError(f"question {ex.id}: no samples")
        checked = [check(t, ex) for t in texts]
        preds = [p for p, _ in checked]
        correct = [c for _, c in checked]
        votes = Counter(p for p in preds if p is not None)
        vote = votes.most_common(1)[0][0] if votes else None
        vote_correct = correct[preds.index(vote)] if vote is not None else False
        best = max(range(len(ss)), key=lambda i: ss[i])
        rows.append({"id": ex.id, "gold": ex.gold, "predictions": preds, "correct": correct, "scores": list(ss),
                     "first_correct": correct[0], "vote": vote, "vote_correct": vote_correct, "best": best,
                     "best_correct": correct[best], "any_correct": any(correct)})
    return rows, best_of_n_metrics(rows)


def best_of_n_metrics(rows: Sequence[dict]) -> dict:
    """Accuracies of the first sample, the majority vote, the reward model's pick and any sample (oracle)
    over per-question rows of `best_of_n`."""
    n = len(rows)

    def rate(key):
        return sum(r[key] for r in rows) / n if n else 0.0

    right = [s for r in rows for s, c in zip(r["scores"], r["correct"]) if c]
    wrong = [s for r in rows for s, c in zip(r["scores"], r["correct"]) if not c]
    return {"n_questions": n, "n_samples": len(rows[0]["scores"]) if rows else 0,
            "first_sample_accuracy": rate("first_correct"), "majority_vote_accuracy": rate("vote_correct"),
            "best_of_n_accuracy": rate("best_correct"), "oracle_accuracy": rate("any_correct"),
            "no_answer_rate": sum(p is None for r in rows for p in r["predictions"]) / max(1, sum(
                len(r["predictions"]) for r in rows)),
            "mean_score_correct": statistics.fmean(right) if right else None,
            "mean_score_wrong": statistics.fmean(wrong) if wrong else None}


def run_rerank(config: RerankConfig, *, generator=None, policy_tokenizer=None, reward_model=None,
               reward_tokenizer=None, examples=None) -> dict:
    """Best-of-N on the configured questions. Pass already built parts (a generator with `.generate`, the
    reward model and tokenizers, examples) to skip loading them."""
    import time

    from .generation import SamplingParams
    from .prompts import build_prompt, load_templates, stop_strings
    from .rationales.rank import reward_views

    templates = load_templates(config.templates)
    if reward_model is None:
        if not config.reward_model:
            raise ValueError("rerank needs --reward-model (a folder written by `sml reward`)")
        reward_model, reward_tokenizer = load_reward_model(config.reward_model, device=_device(config.device))
    if examples is None:
        from .data import load_examples

        examples = load_examples(config.data)
    if not examples:
        raise ValueError("no questions to rerank")
    if generator is not None and policy_tokenizer is None:
        raise ValueError("run_rerank: pass policy_tokenizer with generator (prompts are built with it)")
    if generator is None:
        from .generation import make_generator
        from .models import load_model

        policy = config.policy or _backbone_of(config.reward_model)
        model, policy_tokenizer = load_model(policy, dtype=config.dtype, device=config.device)
        generator = make_generator(model, policy_tokenizer, backend=config.backend, max_batch_size=config.batch_size)
    out = Path(config.out) if config.out else None
    rows, sink = [], None
    if out is not None:  # resumable: rows go to rerank.jsonl a chunk at a time, a rerun skips the done ones
        out.mkdir(parents=True, exist_ok=True)
        rows = _resume_rerank(out, config)
        sink = (out / "rerank.jsonl").open("a")
    done = {r["id"] for r in rows}
    todo = [(i, ex) for i, ex in enumerate(examples) if ex.id not in done]
    if done:
        log.info("best-of-%d: resuming, %d of %d questions done in %s", config.n, len(done), len(examples), out)
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(examples), initial=len(done), desc=f"best-of-{config.n}", unit="q",
                        dynamic_ncols=True)
    t0 = time.perf_counter()
    # One chunk fills the decode batch; its seed comes from its first question's position, so a resumed run
    # samples what an uninterrupted one would have.
    chunk = max(1, config.batch_size // config.n)
    try:
        for start in range(0, len(todo), chunk):
            part = [ex for _, ex in todo[start:start + chunk]]
            prompts = [build_prompt(ex, policy_tokenizer, style=config.prompt, chat=config.chat, templates=templates)
                       for ex in part]
            params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                    top_p=config.top_p, n=config.n, seed=config.seed + todo[start][0],
                                    stop=stop_strings(policy_tokenizer, config.chat))
            completions = generator.generate(prompts, params, progress=False)
            samples = [[c.text for c in cs] for cs in completions]
            score_prompts = [build_prompt(ex, reward_tokenizer, style=config.prompt, chat=config.chat,
                                          templates=templates) for ex in part]
            views, finished = reward_views([t for s in samples for t in s],  # as PPO scores them
                                           [ex for ex, s in zip(part, samples) for _ in s],
                                           [c.finish_reason == "length" for cs in completions for c in cs])
            flat = score_texts(reward_model, reward_tokenizer,
                               [p for p, s in zip(score_prompts, samples) for _ in s], views,
                               batch_size=config.score_batch_size, finished=finished)
            scores, k = [], 0
            for s in samples:
                scores.append(flat[k:k + len(s)])
                k += len(s)
            new_rows, _ = best_of_n(part, samples, scores)
            for row, texts in zip(new_rows, samples):
                row["samples"] = texts
                rows.append(row)
                if sink is not None:
                    sink.write(json.dumps(row) + "\n")
            if sink is not None:
                sink.flush()
            if progress is not None:
                progress.update(len(part))
    finally:
        if sink is not None:
            sink.close()
        if progress is not None:
            progress.close()
    order = {ex.id: i for i, ex in enumerate(examples)}
    rows.sort(key=lambda r: order.get(r["id"], len(order)))
    metrics = best_of_n_metrics(rows)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    metrics["dataset"] = getattr(config.data, "dataset", None)
    if out is not None:
        (out / "rerank.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(out / "rerank_metrics.json", {"config": asdict(config), "metrics": metrics})
    return metrics


def _resume_rerank(out: Path, config: RerankConfig) -> list[dict]:
    """Rows already in out/rerank.jsonl, if they were made with these settings (else a clear error)."""
    from .prompts import templates_digest

    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "out")}
    settings["templates"] = templates_digest(config.templates)  # the content decides the prompts, not the name
    settings_path = out / "rerank_config.json"
    rows_path = out / "rerank.jsonl"
    if settings_path.exists() and rows_path.exists():
        before = json.loads(settings_path.read_text())
        changed = sorted(k for k in settings if before.get(k) != json.loads(json.dumps(settings[k], default=str)))
        if changed:
            raise ValueError(f"{out} holds best-of-N samples made with other settings ({', '.join(changed)} "
                             f"differ); use another output folder or delete {rows_path}")
    from .evaluate import _read_jsonl  # drops a torn last line from an interrupted run: that question reruns

    write_json(settings_path, settings)
    rows = _read_jsonl(rows_path)
    if rows_path.exists():  # without the torn line, so appended rows start on a line of their own
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _device(device: str) -> str:
    from .models import _pick_device

    return _pick_device(device)


def _backbone_of(reward_dir: str | None) -> str:
    meta = Path(reward_dir or "") / REWARD_META
    if meta.is_file():
        backbone = json.loads(meta.read_text()).get("backbone")
        if backbone:
            return backbone
    raise ValueError(f"pass --policy: {reward_dir} records no backbone model to sample with")


def format_rerank_metrics(m: dict) -> str:
    return (f"best-of-{m['n_samples']} on {m['n_questions']} questions: reward-model pick {m['best_of_n_accuracy']:.3f}"
            f", first sample {m['first_sample_accuracy']:.3f}, majority vote {m['majority_vote_accuracy']:.3f}, "
            f"any sample (oracle) {m['oracle_accuracy']:.3f}; no answer {m['no_answer_rate']:.3f}")


__all__ = ["RewardConfig", "run_reward", "load_reward_model", "score_texts", "RerankConfig", "run_rerank",
           "best_of_n", "group_pairs", "tokenize_groups", "collate_groups", "pairwise_losses", "question_mean",
           "pair_metrics", "format_reward_metrics", "format_rerank_metrics"]
