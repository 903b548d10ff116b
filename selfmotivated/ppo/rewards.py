"""The sequence-level reward of a rollout: the reward model's score, plus optional answer-based terms.

A reward function is any callable `reward_fn(prompts, responses) -> tensor (B,)` on texts, so tests plug
a fixed function and the real run plugs the reward model from `sml reward`:

- shared (the default when it fits): the reward model is a LoRA adapter plus a score head on the same
  SFT weights as the policy, so its adapter is loaded into the policy's PeftModel as one more adapter
  and no second model is held in memory;
- separate: anything else (a full reward model, or one trained on another backbone) is loaded on its
  own with `reward.load_reward_model` and scored with `reward.score_texts`.

Both read the score at the last token of `prompt ids + tokens of the response text (+ EOS when the response
ended rather than ran into the token limit)`, exactly as `reward.score_texts` does, so PPO optimises the same number the reward model was trained and
evaluated on.

`sequence_scores` assembles the score PPO maximises: the reward model's (reward "rm", the method), the
answer checker's verdict on the training question's gold (reward "checker": the verifiable-reward control
the learned reward is judged against), or both; minus a penalty for text cut off at the token limit; plus
the ablation terms `correct_bonus` / `no_answer_penalty` (0 by default). Correctness always comes from the
project's one answer checker (`answers.check_answer`), as in evaluation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from .actor_critic import ActorCritic, ValueHead, hidden_states, load_adapter_weights, reward_adapter_parts

log = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
REWARD = "reward"


def shares_backbone(reward_folder: str | Path, sft_model: str) -> bool:
    """Whether a reward model folder is a LoRA adapter trained on exactly `sft_model` (same folder)."""
    from ..models import resolve_model

    folder = Path(reward_folder)
    if not (folder / "adapter_config.json").is_file():
        return False
    meta_path = folder / "reward_model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    backbone = meta.get("backbone") or json.loads((folder / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not backbone:
        return False
    try:
        return Path(resolve_model(backbone)).resolve() == Path(resolve_model(sft_model)).resolve()
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False


class SharedRewardModel:
    """The reward model as adapter "reward" + a score head on the policy's backbone. reward_fn interface.

    lora_config and lora (PEFT's saved tensor names) describe the adapter, head {"weight": (1, H),
    "bias": (1,)} the score head; lora None keeps the adapter's fresh initialisation (benchmarks).
    """

    def __init__(
        self,
        ac: ActorCritic,
        tokenizer,
        lora_config,
        head: dict[str, torch.Tensor],
        lora: dict[str, torch.Tensor] | None = None,
        batch_size: int = 8,
        source: str = "reward model",
    ):
        if not ac.lora:
            raise ValueError("a shared reward model needs the LoRA policy (its backbone carries the adapter)")
        ac.policy.add_adapter(REWARD, lora_config)
        if lora is not None:
            load_adapter_weights(ac.policy, REWARD, lora, source)
        for name, p in ac.policy.named_parameters():
            if f".{REWARD}." in name:
                p.requires_grad_(False)
        ac.mark_trainable()
        self.ac, self.tokenizer, self.batch_size = ac, tokenizer, batch_size
        hidden = head["weight"].shape[-1]
        self.head = ValueHead(hidden).to(next(ac.parameters()).device).requires_grad_(False)
        with torch.no_grad():
            self.head.linear.weight.copy_(head["weight"].reshape(1, hidden))
            self.head.linear.bias.copy_(head["bias"].reshape(1))

    @classmethod
    def from_folder(
        cls, ac: ActorCritic, tokenizer, folder: str | Path, batch_size: int = 8
    ) -> "SharedRewardModel":
        """From a reward adapter folder written by `sml reward`."""
        config, lora, head = reward_adapter_parts(folder)
        return cls(ac, tokenizer, config, head, lora, batch_size, source=f"reward model {folder}")

    takes_finished = True  # the trainer passes which responses ended (scored at EOS) and which were cut off

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 finished: Sequence[bool] | None = None) -> torch.Tensor:
        from ..reward import encode_scored

        pad = self.tokenizer.pad_token_id
        finished = list(finished) if finished is not None else [True] * len(responses)
        seqs = [
            encode_scored(self.tokenizer, self.tokenizer(p, add_special_tokens=False)["input_ids"], r, f)
            for p, r, f in zip(prompts, responses, finished, strict=True)
        ]
        device = self.head.linear.weight.device
        if self.ac.share_prompts:
            return self._score_grouped(prompts, seqs, pad, device)
        scores = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.tensor(
                [s + [pad] * (width - len(s)) for s in chunk], device=device
            )  # (b, L) right-padded
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
            with self.ac.adapter(REWARD):
                h = hidden_states(self.ac.policy, ids, mask)  # (b, L, H)
            last = mask.sum(-1) - 1  # (b,) index of each row's last real token
            scores.append(self.head(h[torch.arange(len(chunk), device=device), last]))
        return torch.cat(scores).cpu()

    def _score_grouped(self, prompts: Sequence[str], seqs: list[list[int]], pad: int, device) -> torch.Tensor:
        """The same scores with each prompt encoded once per chunk for all its responses (shared_prefix.py).
        Chunks hold whole prompts' responses (up to batch_size rows, a prompt with more is split)."""
        from ..shared_prefix import grouped_last_hidden

        by_prompt: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            by_prompt.setdefault(p, []).append(i)
        pieces = [rows[k : k + self.batch_size] for rows in by_prompt.values()
                  for k in range(0, len(rows), self.batch_size)]
        chunks: list[list[list[int]]] = [[]]
        for piece in pieces:
            if chunks[-1] and sum(map(len, chunks[-1])) + len(piece) > self.batch_size:
                chunks.append([])
            chunks[-1].append(piece)
        scores = torch.zeros(len(seqs))
        for chunk in chunks:
            with self.ac.adapter(REWARD):
                h = grouped_last_hidden(self.ac.policy, [[seqs[i] for i in piece] for piece in chunk], pad, device)
            scores[[i for piece in chunk for i in piece]] = self.head(h).float().cpu()
        return scores


class SeparateRewardModel:
    """A reward model held as its own model (`reward.load_reward_model`). reward_fn interface."""

    def __init__(self, folder: str | Path, device: str, dtype: str = "float32", batch_size: int = 8):
        from ..reward import load_reward_model

        self.model, self.tokenizer = load_reward_model(folder, device=device, dtype=dtype)
        self.batch_size = batch_size

    takes_finished = True

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 finished: Sequence[bool] | None = None) -> torch.Tensor:
        from ..reward import score_texts

        return torch.tensor(score_texts(self.model, self.tokenizer, prompts, responses,
                                        batch_size=self.batch_size, finished=finished))


def check_rollouts(responses: Sequence[str], examples: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct (B,), no_answer (B,)) as 0/1 floats, by the project's one answer checker against each training
    question's gold. A response without a question (examples None) counts as wrong and answered."""
    from ..answers import check_answer

    correct, no_answer = [], []
    for text, ex in zip(responses, examples, strict=True):
        if ex is None:
            correct.append(0.0)
            no_answer.append(0.0)
            continue
        prediction, ok = check_answer(text, ex)
        correct.append(float(bool(ok)))
        no_answer.append(float(prediction is None))
    return torch.tensor(correct), torch.tensor(no_answer)


def sequence_scores(config, rm_scores: torch.Tensor | None, correct: torch.Tensor, no_answer: torch.Tensor,
                    truncated: torch.Tensor) -> torch.Tensor:
    """The sequence reward PPO maximises, (B,):

        score = [reward-model score]                          (reward rm or rm+checker)
              + checker_reward * [checker finds the gold]     (reward checker or rm+checker)
              + correct_bonus * [gold] - no_answer_penalty * [no answer]   (ablation terms, 0 by default)
              - truncation_penalty * [cut off at max_new_tokens]
    """
    score = torch.zeros_like(correct)
    if config.reward in ("rm", "rm+checker"):
        if rm_scores is None:
            raise ValueError(f"reward {config.reward!r} needs the reward model's scores")
        score = score + rm_scores.float()
    if config.reward in ("checker", "rm+checker"):
        score = score + config.checker_reward * correct
    score = score + config.correct_bonus * correct - config.no_answer_penalty * no_answer
    return score - config.truncation_penalty * truncated
