"""Stage 4 (`sml ppo`): PPO of the SFT policy against the learned reward model (METHOD.md).

One iteration, top to bottom (OpenRLHF's three steps, CleanRL's names):

    prompts, examples = trainer.prompt_batch(step)           # this process's share of the questions
    rollouts   = generate_rollouts(...)                       # 1. sample with the policy (engine, no grad)
    scores     = sequence_scores(...)                         #    reward model and/or answer checker
    experience = make_experience(...)                         # 2. old/ref log-probs, r - beta*KL, advantages
    stats      = trainer.update(experience)                   # 3. PPO epochs over minibatches
    kl_ctl.update(kl), evaluate every K steps, guard, checkpoint, log

How this simplifies the textbook algorithm, and why:
- The critic is a second LoRA adapter (plus a value head) on the policy's own frozen backbone, not a
  second model; the reference is that backbone with adapters disabled (see actor_critic.py).
- Actor and critic have disjoint parameters, so their losses are backpropagated one after the other
  (two smaller graphs instead of one) and no `vf_coef` is needed: under Adam a constant factor on one
  loss only rescales nothing (the update is scale-free), so the critic gets its own learning rate.
- The model is never put in train mode: dropout would make the first PPO ratio differ from 1.
- advantage "rloo" (the default) replaces the critic by a baseline per question, the mean return of the
  question's other samples: the reward model only ever learned differences within a question, and a
  critic on a 2-core CPU costs a forward and a backward per row for a baseline that starts worse than
  a constant. advantage "gae" keeps the textbook critic, trained alone for its first iterations.
- Speed without other maths (ppo.reuse_sampler_logprobs, ppo.share_prompts; tests pin both): the old
  log-probs and entropies are the sampler's, which drew the tokens from the same policy at the same
  temperature, so no forward pass recomputes them; every forward pass (reference, reward model, update)
  encodes a question's prompt once for all its samples (shared_prefix.py), an update's micro-batches
  holding a question's samples together. `sml bench ppo` times both against the plain path.
- Distributed: each process samples and scores its own prompts; advantages are whitened with
  statistics over all processes; gradients are averaged by hand (one all-reduce of the flattened
  trainable gradients per optimizer step) rather than through DDP, which cannot follow two adapters
  of one module being called in turn.

Outputs in OUT: metrics.jsonl (one row per iteration; eval rows too), tensorboard/, checkpoints/
(resumable; the last good one is never deleted), eval/step-N/ (predictions), policy/ (the merged
model, loadable by `sml eval --model OUT/policy`), policy_adapter/ (LoRA), run.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..data import DataConfig
from .config import HELDOUT, PPOConfig, shares_prompts
from .actor_critic import ActorCritic, build_actor_critic, lora_config, merge_if_adapter
from .core import AdaptiveKLController, FixedKLController, masked_mean, masked_sum, policy_loss, value_loss
from .experience import Experience, generate_rollouts, make_experience
from .gate import RewardModelInvalid, check_reward_validity  # noqa: F401 - RewardModelInvalid re-exported
from .guard import Alarm, FailureGuard, GuardTripped
from ..metrics import auroc
from ..rationales.rank import reward_views
from .rewards import RewardFn, check_rollouts, sequence_scores

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # the name training.checkpoint_dirs looks for


# ----------------------------------------------------------------------------------------------------
# Pieces of the update that need no trainer state


def average_gradients(params: Sequence[torch.nn.Parameter], accelerator) -> None:
    """Mean of each gradient over processes: one all-reduce of the flattened gradients (see module docstring)."""
    if accelerator is None or accelerator.num_processes == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def whiten_over_processes(accelerator) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """masked_whiten with the mean and (unbiased) variance taken over every process's tokens."""
    from .core import masked_whiten

    if accelerator is None or accelerator.num_processes == 1:
        return masked_whiten

    def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        sums = torch.stack([masked_sum(x, mask), masked_sum(x * x, mask), mask.sum().to(x.dtype)]).double()
        total, total_sq, n = accelerator.reduce(sums, reduction="sum").tolist()
        mean = total / n
        var = (total_sq / n - mean * mean) * n / max(n - 1, 1)
        return torch.where(mask.bool(), (x - mean) * (var + eps) ** -0.5, 0).to(x.dtype)

    return whiten


def reduce_stats(stats: dict[str, float], accelerator) -> dict[str, float]:
    """Mean of every stat over processes (every process must hold the same keys)."""
    if accelerator is None or accelerator.num_processes == 1:
        return dict(stats)
    keys = sorted(stats)
    device = accelerator.device
    values = accelerator.reduce(
        torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device), reduction="mean"
    )
    return dict(zip(keys, values.tolist()))


def _micro_batch_order(index: torch.Tensor, prompt_of: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A minibatch's rows reordered for its micro-batches: the samples of a question side by side (its prompt
    is then encoded once per micro-batch), questions by their longest response (less padding). The losses are
    token means over the whole minibatch, so how its rows are split into micro-batches changes no number
    beyond float rounding."""
    rows = index.tolist()
    longest: dict[int, int] = {}
    for b in rows:
        q = int(prompt_of[b])
        longest[q] = max(longest.get(q, 0), int(lengths[b]))
    rows.sort(key=lambda b: (longest[int(prompt_of[b])], int(prompt_of[b]), -int(lengths[b])))
    return torch.tensor(rows, dtype=index.dtype)


def prompt_order(n: int, seed: int, epoch: int) -> list[int]:
    """A seeded permutation of n prompts, new each epoch: the data order is a pure function of the step."""
    order = list(range(n))
    random.Random(f"ppo-prompts-{seed}-{epoch}").shuffle(order)
    return order


@dataclass
class TrainerState:
    """Where a run is; saved with each checkpoint."""

    step: int = 0
    kl_coef: float = 0.0
    last_good_step: int | None = None
    rollbacks: int = 0
    guard: dict = field(default_factory=dict)
    seconds: float = 0.0
    evals: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# The trainer


class PPOTrainer:
    """PPO on an ActorCritic. `prompts` are final prompt texts; `examples` (same length, or None) the
    training questions behind them, for the optional answer-based reward terms and the rollout stats.
    `eval_fn(model, tokenizer, step) -> accuracy` runs on the main process every `eval_steps`."""

    def __init__(
        self,
        config: PPOConfig,
        ac: ActorCritic,
        tokenizer,
        reward_fn: RewardFn,
        prompts: Sequence[str],
        examples: Sequence | None = None,
        eval_fn: Callable | None = None,
        out: str | Path | None = None,
        accelerator=None,
        stop_strings: Sequence[str] = (),
    ):
        from ..generation import make_generator

        self.config, self.ac, self.tokenizer, self.reward_fn = config, ac, tokenizer, reward_fn
        self.prompts = list(prompts)
        self.examples = list(examples) if examples is not None else [None] * len(self.prompts)
        if not self.prompts:
            raise ValueError("PPO needs at least one training prompt")
        if len(self.examples) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.examples)} examples")
        self.eval_fn = eval_fn
        self.accelerator = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.main = self.rank == 0
        if config.prompts_per_iteration % self.world:
            raise ValueError(
                f"prompts_per_iteration={config.prompts_per_iteration} must divide evenly over "
                f"{self.world} processes"
            )
        self.out = Path(out) if out is not None else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.share_prompts = shares_prompts(config, next(ac.policy.parameters()).device.type)
        ac.share_prompts = self.share_prompts  # every forward pass of the roles (and a shared reward model)
        # Log-probs, KL and entropy of the distribution the rollouts are drawn from (the sampler's temperature).
        ac.temperature = config.temperature
        self._check_sampler_logprobs = False  # set per iteration: old log-probs came from the sampler
        self.generator = make_generator(
            ac.policy, tokenizer, backend=config.backend, max_seqs=config.generation_batch_size,
            pack_weights=config.pack_weights,
        )
        self._stop = tuple(stop_strings)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": ac.actor_parameters, "lr": config.learning_rate},
                {"params": ac.critic_parameters, "lr": config.critic_learning_rate},
            ],
            weight_decay=0.0,
        )
        self.kl_ctl = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
        off = lambda v: v or None  # noqa: E731 - 0 turns a guard threshold off
        self.guard = FailureGuard(
            max_kl=off(config.guard_max_kl),
            min_entropy=off(config.guard_min_entropy),
            min_response_length=off(config.guard_min_response_length),
            accuracy_drop=off(config.guard_accuracy_drop),
            patience=config.guard_patience,
        )
        self.whiten = whiten_over_processes(accelerator) if config.whiten_advantages else None
        self.state = TrainerState(kl_coef=self.kl_ctl.value)
        self.history: list[dict] = []  # every logged row, in memory (tests and summaries read it)
        self._tb = None
        self._tb_missing = False

    # ------------------------------------------------------------------------------------------
    # the loop

    def train(self) -> dict:
        """Run iterations until config.iterations (or a guard stop, or stop_after_steps); returns a summary."""
        from tqdm.auto import tqdm

        config = self.config
        if self.state.step == 0 and self.state.last_good_step is None:
            self._baseline()
        bar = tqdm(
            total=config.iterations,
            initial=self.state.step,
            desc="ppo",
            unit="it",
            dynamic_ncols=True,
            disable=not (self.main and config.progress),
        )
        started = self.state.step
        try:
            while self.state.step < config.iterations:
                metrics = self.iteration()
                bar.update(1)
                bar.set_postfix(
                    score=f"{metrics['ppo/score_mean']:.3f}", kl=f"{metrics['ppo/kl']:.2f}", refresh=False
                )
                if (
                    config.stop_after_steps
                    and self.state.step - started >= config.stop_after_steps
                    and self.state.step < config.iterations
                ):
                    return self.summary("interrupted")
        finally:
            bar.close()
            if self._tb is not None:
                self._tb.flush()
        self.save_model()
        return self.summary("finished")

    def iteration(self) -> dict:
        """One PPO iteration: generate -> make experience -> update, then evaluate, guard, save, log."""
        config, step = self.config, self.state.step
        timings = {}
        t0 = time.perf_counter()

        # 1. generate: this process's prompts, sampled with the current policy
        prompts, examples = self.prompt_batch(step)
        rollouts = generate_rollouts(
            self.generator, prompts, examples, self.tokenizer, self.sampling_params(step)
        )
        timings["time/generate"] = time.perf_counter() - t0

        # sequence scores: the reward model and/or the answer checker, minus the truncation penalty
        t = time.perf_counter()
        with self.packed_weights():  # the no-grad passes of scoring and experience
            responses = [r.response for r in rollouts]
            correct, no_answer = check_rollouts(responses, [r.example for r in rollouts])  # (B,) each, 0/1
            truncated = torch.tensor([float(r.finish_reason == "length") for r in rollouts])  # (B,)
            rm_scores = None
            if config.reward in ("rm", "rm+checker"):
                if getattr(self.reward_fn, "takes_finished", False):  # ours: read as in its training pairs
                    views, finished = reward_views(responses, [r.example for r in rollouts],
                                                   [r.finish_reason == "length" for r in rollouts])
                    rm_scores = self.reward_fn([r.prompt for r in rollouts], views, finished=finished)
                else:  # a custom reward function reads the responses as written
                    rm_scores = self.reward_fn([r.prompt for r in rollouts], responses)
                rm_scores = rm_scores.float().cpu()  # (B,)
            scores = sequence_scores(config, rm_scores, correct, no_answer, truncated)  # (B,)
            answer_stats = {"rollout/correct_frac": correct.mean().item(),
                            "rollout/no_answer_frac": no_answer.mean().item()}
            if rm_scores is not None:
                answer_stats["ppo/rm_score_mean"] = rm_scores.mean().item()
                # Does the reward model still track correctness on what the policy writes now? (nan: all
                # right or all wrong this iteration)
                rm_auroc = auroc(rm_scores.tolist(), [bool(c) for c in correct.tolist()])
                answer_stats["ppo/rm_auroc"] = rm_auroc if rm_auroc is not None else math.nan
            timings["time/score"] = time.perf_counter() - t

            # 2. make experience: no-grad forwards of policy, reference and critic; KL-shaped rewards; GAE
            t = time.perf_counter()
            experience, exp_stats = make_experience(
                self.ac,
                rollouts,
                scores,
                self.pad_id,
                self.kl_ctl.value,
                config.kl_estimator,
                config.gamma,
                config.lam,
                self.whiten,
                batch_size=config.micro_batch_size,
                advantage=config.advantage,
                reuse_sampler_logprobs=config.reuse_sampler_logprobs,
            )
        timings["time/forward"] = time.perf_counter() - t

        # 3. train: PPO epochs over minibatches
        t = time.perf_counter()
        # Old log-probs from the sampler: the first minibatch's forward (the policy before any step) measures
        # how far they are from a forward pass's, as make_experience's forward otherwise does.
        self._check_sampler_logprobs = exp_stats.get("rollout/sampler_logprobs_reused") == 1.0
        with self.packed_weights(training=True):
            update_stats = self.update(experience)
        timings["time/update"] = time.perf_counter() - t

        metrics = {**exp_stats, **answer_stats, **update_stats}
        metrics = reduce_stats(metrics, self.accelerator)
        metrics["ppo/kl_coef"] = self.kl_ctl.value
        self.kl_ctl.update(metrics["ppo/kl"], config.prompts_per_iteration * config.samples_per_prompt)
        self.state.step = step + 1
        self.state.kl_coef = self.kl_ctl.value

        step = self.state.step
        alarm = self.guard.observe(step, metrics)
        checked = False  # whether test accuracy was measured (and judged) at this step
        if alarm is None and self.evaluating and step % config.eval_steps == 0:
            t = time.perf_counter()
            metrics["eval/accuracy"] = self.evaluate(step)
            alarm, accuracy_held = self.guard.observe_accuracy(step, metrics["eval/accuracy"])
            timings["time/eval"] = time.perf_counter() - t
            checked = True
        timings["time/iteration"] = time.perf_counter() - t0
        self.state.seconds += timings["time/iteration"]
        metrics.update(timings)
        self.log(step, metrics)

        if alarm is not None:
            self.on_alarm(alarm)
            return metrics
        # A checkpoint is good when the guard saw nothing; with periodic accuracy, only where accuracy was
        # measured and held (in between, reward hacking could not have been seen yet).
        good = (checked and accuracy_held) if self.evaluating else True
        if step % config.save_steps == 0 or checked or step == config.iterations:
            self.save_checkpoint(good)
        return metrics

    def packed_weights(self, training: bool = False):
        """A context in which linear layers read oneDNN-packed copies of the weights (`ppo.pack_weights`; see
        `selfmotivated/packed.py`): all of them in the no-grad passes, the frozen ones (LoRA's backbone, the
        tied LM head) in the update; a no-op on GPUs, in bf16, or without oneDNN."""
        from ..packed import packed_linears

        if not self.config.pack_weights:
            return contextlib.nullcontext()
        modules = list(self.ac.modules())
        reward_model = getattr(self.reward_fn, "model", None)
        if isinstance(reward_model, torch.nn.Module):
            modules += list(reward_model.modules())
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        return packed_linears(modules, training=training, trained=trained)

    @property
    def evaluating(self) -> bool:
        return bool(self.config.eval_steps) and self.eval_fn is not None

    def prompt_batch(self, step: int) -> tuple[list[str], list]:
        """This process's prompts for `step`: a slice of the global order (seeded per epoch)."""
        per_process = self.config.prompts_per_iteration // self.world
        n = len(self.prompts)
        first = step * self.config.prompts_per_iteration + self.rank * per_process
        picks = []
        for g in range(first, first + per_process):
            epoch, pos = divmod(g, n)
            picks.append(prompt_order(n, self.config.seed, epoch)[pos])
        return [self.prompts[i] for i in picks], [self.examples[i] for i in picks]

    def sampling_params(self, step: int, seed: int | None = None, n: int | None = None):
        """How rollouts are sampled. The seed is a function of (seed, step, process): resumable, and each
        process draws its own samples."""
        from ..generation import SamplingParams

        c = self.config
        if seed is None:
            seed = (c.seed * 1_000_003 + step) * 1024 + self.rank
        return SamplingParams(
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            n=n or c.samples_per_prompt,
            stop=self._stop,
            seed=seed,
            return_logprobs=True,
        )

    # ------------------------------------------------------------------------------------------
    # step 3: the PPO update

    def update(self, exp: Experience) -> dict[str, float]:
        """ppo_epochs passes over the experience in shuffled minibatches, one optimizer step each; stops after
        the minibatch whose approx KL(old || new) passes target_kl (the policy moved far enough from the one
        that sampled this batch). With gae, the first critic_warmup_iterations train only the critic."""
        config = self.config
        sums: dict[str, list[float]] = defaultdict(list)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + self.state.step)
        train_actor = not (config.advantage == "gae" and self.state.step < config.critic_warmup_iterations)
        train_critic = config.advantage == "gae"
        epochs_done, minibatches, early_stop = 0, 0, False
        prompt_of = self._prompt_ids(exp) if self.share_prompts or config.minibatch_by_question else None
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(exp), generator=gen)
            if config.minibatch_by_question:  # questions in random order, each one's samples together
                question_order = torch.randperm(int(prompt_of.max()) + 1, generator=gen)
                order = order[torch.argsort(torch.argsort(question_order)[prompt_of[order]], stable=True)]
            for mb in order.split(config.mini_batch_size):
                if self.share_prompts:
                    mb = _micro_batch_order(mb, prompt_of, exp.response_mask.sum(-1))
                check = minibatches == 0 and self._check_sampler_logprobs
                for k, v in self.minibatch_step(exp, mb, train_actor, train_critic, check).items():
                    sums[k].append(v)
                minibatches += 1
                if train_actor and config.target_kl:
                    kl = reduce_stats({"kl": sums["ppo/approx_kl"][-1]}, self.accelerator)["kl"]
                    if kl > config.target_kl:
                        early_stop = True
                        break
            epochs_done += 1
            if early_stop:
                break
        stats = {k: sum(v) / len(v) for k, v in sums.items()}
        stats["ppo/epochs"] = epochs_done
        stats["ppo/minibatches"] = minibatches
        stats["ppo/early_stop"] = float(early_stop)
        stats["ppo/critic_warmup"] = float(not train_actor)
        return stats

    @staticmethod
    def _prompt_ids(exp: Experience) -> torch.Tensor:
        """(B,) which distinct prompt each row has (its question), numbered by first appearance."""
        from ..shared_prefix import distinct_rows

        P = exp.prompt_width
        return distinct_rows(exp.sequences[:, :P], exp.attention_mask[:, :P])[1].cpu()

    def minibatch_step(self, exp: Experience, index: torch.Tensor, train_actor: bool = True,
                       train_critic: bool = True, check_old_logprobs: bool = False) -> dict[str, float]:
        """One optimizer step on rows `index`, accumulated over micro-batches; returns its stats. Losses are
        token means over the whole minibatch (each micro-batch adds its tokens' share). check_old_logprobs (the
        first step of an iteration, before which the policy is the one that sampled): also the mean absolute
        difference of the forward's log-probs from exp.old_logprobs, `rollout/logprob_diff`."""
        config, ac = self.config, self.ac
        self.optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = defaultdict(float)
        num_tokens = float(exp.response_mask[index].sum())
        for micro in index.split(config.micro_batch_size):
            mb = exp.select(micro)
            seq, attn, mask, P = mb.sequences, mb.attention_mask, mb.response_mask, mb.prompt_width
            share = float(mask.sum()) / max(num_tokens, 1.0)  # this micro-batch's weight in token means

            if train_actor:
                logprobs, entropy = ac.policy_logprobs(
                    seq, attn, P, with_entropy=config.entropy_coef > 0
                )  # (b, T)
                pg_loss, pg_stats = policy_loss(
                    logprobs, mb.old_logprobs, mb.advantages, mask, config.clip_range, num_tokens
                )
                actor_loss = pg_loss
                if entropy is not None:
                    actor_loss = pg_loss - config.entropy_coef * masked_sum(entropy, mask) / max(num_tokens, 1.0)
                actor_loss.backward()
                stats["losses/policy"] += pg_loss.item()
                # pg_stats are this micro-batch's token means; weigh them by its share of the tokens
                stats["ppo/clipfrac"] += share * pg_stats["clipfrac"].item()
                stats["ppo/approx_kl"] += share * pg_stats["approx_kl"].item()
                if check_old_logprobs:
                    diff = masked_sum((logprobs.detach() - mb.old_logprobs).abs(), mask)
                    stats["rollout/logprob_diff"] += diff.item() / max(num_tokens, 1.0)

            if train_critic:
                values = ac.values(seq, attn, P)  # (b, T)
                vf_loss, vf_stats = value_loss(
                    values, mb.old_values, mb.returns, mask, config.clip_range_value or None, num_tokens
                )
                vf_loss.backward()
                stats["losses/value"] += vf_loss.item()
                stats["ppo/vf_clipfrac"] += share * vf_stats["vf_clipfrac"].item()

        actor, critic = ac.actor_parameters, ac.critic_parameters
        average_gradients(actor + critic, self.accelerator)
        if config.max_grad_norm:
            if train_actor:
                stats["ppo/grad_norm_policy"] = float(torch.nn.utils.clip_grad_norm_(actor, config.max_grad_norm))
            if train_critic:
                stats["ppo/grad_norm_value"] = float(torch.nn.utils.clip_grad_norm_(critic, config.max_grad_norm))
        self.optimizer.step()  # parameters without a gradient (set_to_none) are left as they are
        return dict(stats)

    # ------------------------------------------------------------------------------------------
    # evaluation, guard, logging

    def evaluate(self, step: int) -> float:
        """Test accuracy of the current policy (main process; the value is shared with every process)."""
        accuracy = float(self.eval_fn(self.ac.policy, self.tokenizer, step)) if self.main else 0.0
        if self.world > 1:
            from accelerate.utils import broadcast

            accuracy = broadcast(
                torch.tensor([accuracy], device=self.accelerator.device), from_process=0
            ).item()
        self.state.evals.append({"step": step, "accuracy": accuracy})
        return accuracy

    def _baseline(self) -> None:
        """Before the first iteration: the SFT model's test accuracy, and the start as the first good checkpoint."""
        if self.evaluating:
            accuracy = self.evaluate(0)
            self.guard.observe_accuracy(0, accuracy)
            self.log(0, {"eval/accuracy": accuracy})
        self.save_checkpoint(good=True)

    def on_alarm(self, alarm: Alarm) -> None:
        """Roll back to the last good checkpoint, or stop with the last good weights saved as the model."""
        config = self.config
        log.warning("failure guard at step %d [%s]: %s", self.state.step, alarm.signal, alarm.message)
        last_good = self.last_good_folder()
        can_roll_back = config.guard_action == "rollback" and self.state.rollbacks < config.max_rollbacks
        if can_roll_back and last_good is not None:
            step = self.state.step
            self.load_checkpoint(last_good, weights_only=True)
            self.state.rollbacks += 1
            self.guard.reset_strikes()
            self.log(
                step,
                {"guard/rollback": 1.0, "guard/rolled_back_to": float(self.state.last_good_step)},
                note=f"rolled back to step {self.state.last_good_step}: [{alarm.signal}] {alarm.message}",
            )
            return
        if last_good is not None:
            self.load_checkpoint(last_good, weights_only=True)
        self.log(self.state.step, {"guard/stop": 1.0}, note=f"stopped: [{alarm.signal}] {alarm.message}")
        self.save_model()
        self.write_record("stopped", {"signal": alarm.signal, "message": alarm.message})
        raise GuardTripped(
            alarm, self.state.step, self.state.last_good_step, str(self.out) if self.out else None
        )

    def log(self, step: int, metrics: dict, note: str | None = None) -> None:
        row = {
            "step": step,
            **{
                k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in metrics.items()
            },
        }
        if note:
            row["note"] = note
        self.history.append(row)
        if not self.main or self.out is None:
            return
        with (self.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        tb = self.tensorboard()
        if tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(k, v, step)

    def tensorboard(self):
        if self._tb is None and self.config.tensorboard and self.out is not None and not self._tb_missing:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except (
                ImportError
            ):  # tensorboard is a dependency; a stripped environment still gets the JSONL log
                log.warning("tensorboard is not installed; logging to metrics.jsonl only")
                self._tb_missing = True
                return None
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        return self._tb

    def summary(self, status: str) -> dict:
        rows = [r for r in self.history if "ppo/score_mean" in r]
        first, last = (rows[0], rows[-1]) if rows else ({}, {})
        summary = {
            "status": status,
            "steps": self.state.step,
            "score_first": first.get("ppo/score_mean"),
            "score_last": last.get("ppo/score_mean"),
            "kl_last": last.get("ppo/kl"),
            "entropy_last": last.get("ppo/entropy"),
            "evals": self.state.evals,
            "last_good_step": self.state.last_good_step,
            "rollbacks": self.state.rollbacks,
            "seconds": round(self.state.seconds, 2),
            "out": str(self.out) if self.out else None,
        }
        if status == "finished":
            self.write_record(status, summary)
        return summary

    def write_record(self, status: str, details: dict) -> None:
        if self.main and self.out is not None:
            from ..training import library_versions, write_json

            write_json(
                self.out / "run.json",
                {
                    "stage": "ppo",
                    "status": status,
                    "config": asdict(self.config),
                    "versions": library_versions(),
                    "processes": self.world,
                    "result": details,
                    "state": asdict(self.state),
                },
            )

    # ------------------------------------------------------------------------------------------
    # checkpoints: the trained tensors, the optimizer state, the trainer state (safetensors + JSON)

    def checkpoint_root(self) -> Path | None:
        return self.out / "checkpoints" if self.out is not None else None

    def save_checkpoint(self, good: bool) -> None:
        """OUT/checkpoints/step-NNNNNNN/. All processes hold the same weights; the main one writes."""
        if self.out is None:  # nothing to write to (tests of the maths): no checkpoints, no rollback
            return
        from safetensors.torch import save_file

        from ..training import checkpoint_dirs, write_json

        if good:
            self.state.last_good_step = self.state.step
        self.state.guard = self.guard.state_dict()
        if self.main:
            final = self.checkpoint_root() / f"step-{self.state.step:07d}"
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            weights, optim, groups = self._snapshot()
            save_file(weights, str(tmp / "trainable.safetensors"))
            save_file(optim, str(tmp / "optimizer.safetensors"))
            write_json(tmp / TRAINER_STATE, {**asdict(self.state), "good": good, "param_groups": groups})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            keep_good = (
                f"step-{self.state.last_good_step:07d}" if self.state.last_good_step is not None else None
            )
            older = [d for d in checkpoint_dirs(self.out) if d.name != keep_good]
            for d in older[: max(0, len(older) - self.config.save_total_limit)]:
                shutil.rmtree(d, ignore_errors=True)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def _snapshot(self):
        """(trained tensors by name, optimizer tensors by "index.key", param groups without tensors), CPU copies."""
        weights = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.ac.trainable_state().items()
        }
        sd = self.optimizer.state_dict()
        optim = {
            f"{i}.{k}": v.detach().to("cpu", copy=True).reshape(v.shape).contiguous()
            for i, s in sd["state"].items()
            for k, v in s.items()
            if torch.is_tensor(v)
        }
        groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
        return weights, optim, groups

    def _restore(self, weights: dict, optim: dict, groups: list) -> None:
        named = self.ac.trainable_state()
        missing = sorted(set(named) - set(weights))
        if missing:
            raise ValueError(
                f"checkpoint lacks trained tensors {missing[:3]} (was it made with other settings?)"
            )
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(weights[k].to(p.device, p.dtype))
        state: dict = defaultdict(dict)
        for key, value in optim.items():
            i, name = key.split(".", 1)
            state[int(i)][name] = value.to(self.ac.value_head.linear.weight.device)
        self.optimizer.load_state_dict({"state": dict(state), "param_groups": groups})

    def last_good_folder(self) -> Path | None:
        if self.state.last_good_step is None or self.out is None:
            return None
        folder = self.checkpoint_root() / f"step-{self.state.last_good_step:07d}"
        return folder if folder.is_dir() else None

    def load_checkpoint(self, folder: Path, weights_only: bool = False) -> None:
        """Restore weights and optimizer (and, unless weights_only, the trainer, KL and guard state)."""
        from safetensors.torch import load_file

        data = json.loads((folder / TRAINER_STATE).read_text())
        self._restore(
            load_file(str(folder / "trainable.safetensors")),
            load_file(str(folder / "optimizer.safetensors")),
            data.pop("param_groups"),
        )
        data.pop("good", None)
        restored = TrainerState(**data)
        self.kl_ctl.value = restored.kl_coef
        if not weights_only:
            self.state = restored
            self.guard.load_state_dict(restored.guard)

    def resume(self) -> bool:
        """Continue from the newest checkpoint in OUT, if any. Returns whether it did."""
        from ..training import checkpoint_dirs, trim_metrics_log

        if self.out is None:
            return False
        found = checkpoint_dirs(self.out)
        if not found:
            return False
        self.load_checkpoint(found[-1])
        if self.accelerator is not None:
            trim_metrics_log(self.out, self.state.step, self.accelerator)
        elif (self.out / "metrics.jsonl").is_file():
            path = self.out / "metrics.jsonl"
            rows = [r for r in path.read_text().splitlines() if r.strip()]
            path.write_text(
                "".join(r + "\n" for r in rows if json.loads(r).get("step", 0) <= self.state.step)
            )
        log.info("resuming PPO from %s (step %d)", found[-1], self.state.step)
        return True

    # ------------------------------------------------------------------------------------------
    # the final model

    def save_model(self) -> None:
        """OUT/policy: the policy as a plain `save_pretrained` model (LoRA merged), with the tokenizer;
        OUT/policy_adapter: the LoRA adapter alone."""
        if self.out is None:
            return
        if self.main:
            from ..training import hf_progress_bars_off

            with hf_progress_bars_off():
                save_policy(self.ac, self.tokenizer, self.out)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def save_policy(ac: ActorCritic, tokenizer, out: Path) -> None:
    """Write OUT/policy (merged, loadable by `sml eval --model`) and, for LoRA, OUT/policy_adapter."""
    import copy

    from .actor_critic import POLICY

    out = Path(out)
    target = out / "policy"
    tmp = target.with_name("policy.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if ac.lora:
        adapter_tmp = out / "policy_adapter.tmp"
        shutil.rmtree(adapter_tmp, ignore_errors=True)
        # PEFT writes a non-default adapter into a subfolder named after it.
        ac.policy.save_pretrained(str(adapter_tmp), selected_adapters=[POLICY])
        shutil.rmtree(out / "policy_adapter", ignore_errors=True)
        os.replace(adapter_tmp / POLICY, out / "policy_adapter")
        shutil.rmtree(adapter_tmp, ignore_errors=True)
        tokenizer.save_pretrained(str(out / "policy_adapter"))
        # Merge into a copy: merging in place and unmerging later would leave rounding error in the
        # frozen backbone, which is also the reference model.
        merged = copy.deepcopy(ac.policy).merge_and_unload(adapter_names=[POLICY])
        merged.save_pretrained(str(tmp), safe_serialization=True)
        del merged
    else:
        ac.policy.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


# ----------------------------------------------------------------------------------------------------
# `sml ppo`


def resolve_paths(config: PPOConfig) -> tuple[str, str | None, Path]:
    """(sft model, reward model folder or None, output folder) from the flags and RUN_DIR."""
    run = Path(config.run_dir) if config.run_dir else None
    sft = config.sft_model or (str(run / "sft" / "model") if run else None)
    if not sft:
        raise ValueError("ppo needs the SFT model: pass --sft-model (or --run-dir with RUN_DIR/sft/model)")
    reward = config.reward_model or (
        str(run / "reward" / "model") if run and (run / "reward" / "model").is_dir() else None
    )
    out = Path(config.out) if config.out else (run / "ppo" if run else None)
    if out is None:
        raise ValueError(
            "ppo needs an output folder: pass --out DIR (or --run-dir, which puts it in RUN_DIR/ppo)"
        )
    return sft, reward, out


def make_eval_fn(config: PPOConfig, sft: str, out: Path) -> Callable:
    """eval_fn(model, tokenizer, step) -> test accuracy with `evaluate.run_eval` (greedy, our answer checker)."""
    from ..evaluate import EvalConfig, run_eval

    examples = None
    if config.eval_split == HELDOUT:  # the training questions after PPO's own: never trained on, not test
        from ..data import load_examples

        start = config.data.limit
        if start is None or not config.eval_limit:
            raise ValueError("ppo.eval_split 'heldout' takes the eval_limit training questions after PPO's own: "
                             "set data.limit (the pipeline's train_limit) and eval_limit")
        data = DataConfig(**{**asdict(config.data), "split": "train", "limit": start + config.eval_limit})
        examples = load_examples(data)[start:]
        if not examples:
            raise ValueError(f"eval_split 'heldout': the training split of {config.data.dataset!r} has no questions "
                             f"after the first {start} that PPO trains on")
    else:
        data = DataConfig(**{**asdict(config.data), "split": config.eval_split, "limit": config.eval_limit})

    def eval_fn(model, tokenizer, step: int) -> float:
        eval_config = EvalConfig(
            model=sft,
            out=str(out / "eval" / f"step-{step:07d}"),
            prompt=config.prompt,
            exemplars=config.exemplars,
            num_exemplars=config.num_exemplars,
            chat=config.chat,
            templates=config.templates,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.generation_batch_size,
            backend=config.backend,
            progress=False,
            data=data,
        )
        return run_eval(eval_config, model=model, tokenizer=tokenizer, examples=examples)["accuracy"]

    return eval_fn


def run_ppo(config: PPOConfig, reward_fn: RewardFn | None = None, eval_fn: Callable | None = None) -> dict:
    """Run PPO (resuming from OUT's last checkpoint when there is one) and save OUT/policy. Returns a summary.

    reward_fn(prompts, responses) -> tensor (B,) replaces the reward model (tests, custom rewards);
    eval_fn(model, tokenizer, step) -> accuracy replaces the periodic test evaluation.
    """
    trainer = build_trainer(config, reward_fn, eval_fn)
    if trainer.state.step >= config.iterations:
        log.info("PPO in %s already finished %d iterations", trainer.out, trainer.state.step)
        trainer.save_model()
        return trainer.summary("finished")
    return trainer.train()


def build_trainer(
    config: PPOConfig, reward_fn: RewardFn | None = None, eval_fn: Callable | None = None
) -> PPOTrainer:
    """Load the SFT model, the reward model and the training questions; build the trainer (resumed if OUT
    holds a checkpoint and config.resume). Every process of an `accelerate launch` calls it."""
    from accelerate import Accelerator

    from ..data import load_examples
    from ..models import load_model
    from ..prompts import build_prompt, load_templates, stop_strings
    from ..training import prepare_out, set_seed
    from .rewards import SeparateRewardModel, SharedRewardModel, shares_backbone

    sft, reward_path, out = resolve_paths(config)
    uses_rm = config.reward in ("rm", "rm+checker")
    if not uses_rm:
        reward_path = None  # the checker alone scores: no reward model is loaded, nor its critic start
    if uses_rm and reward_fn is None and reward_path is None:
        raise ValueError(
            "ppo needs a reward model: pass --reward-model (a `sml reward` output folder) or --run-dir "
            "with RUN_DIR/reward/model (or --reward checker for the answer checker as the reward)"
        )
    if uses_rm and reward_fn is None:
        check_reward_validity(reward_path, config.min_reward_auroc, within_question=config.advantage == "rloo")
    # Without a GPU, accelerate sets up torch.distributed (gloo) for several processes only when told cpu=True.
    from ..training import reset_single_process_state

    reset_single_process_state()
    accelerator = Accelerator(cpu=config.cpu or not torch.cuda.is_available())
    settings = {k: v for k, v in asdict(config).items() if k != "iterations"}  # a run may be extended
    resume_from = prepare_out(out, settings, config.resume, accelerator)

    set_seed(config.seed)
    device = str(accelerator.device)
    model, tokenizer = load_model(sft, dtype=config.dtype, device=device)
    model = merge_if_adapter(model)
    shared = reward_path is not None and shares_backbone(reward_path, sft)
    critic_from = reward_path if config.critic_init == "reward" and shared else None
    if config.critic_init == "reward" and reward_path is not None and not shared:
        log.warning(
            "the reward model %s is not a LoRA adapter on %s; the critic starts from the SFT model",
            reward_path,
            sft,
        )
    lora = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    ac = build_actor_critic(model, config.method, lora, critic_from=critic_from)
    _broadcast_trainable(ac, accelerator)  # every process starts from rank 0's fresh adapters
    if reward_fn is None and uses_rm:
        if shared and config.method == "lora":
            reward_fn = SharedRewardModel.from_folder(
                ac, tokenizer, reward_path, batch_size=config.micro_batch_size
            )
        else:
            reward_fn = SeparateRewardModel(
                reward_path, device=device, dtype=config.dtype, batch_size=config.micro_batch_size
            )

    examples = load_examples(config.data)
    templates = load_templates(config.templates)
    prompts = [
        build_prompt(
            ex,
            tokenizer,
            style=config.prompt,
            exemplars=config.exemplars,
            chat=config.chat,
            num_exemplars=config.num_exemplars,
            data_dir=config.data.data_dir,
            templates=templates,
        )
        for ex in examples
    ]
    if eval_fn is None and config.eval_steps:
        eval_fn = make_eval_fn(config, sft, out)
    trainer = PPOTrainer(
        config,
        ac,
        tokenizer,
        reward_fn,
        prompts,
        examples,
        eval_fn=eval_fn,
        out=out,
        accelerator=accelerator,
        stop_strings=stop_strings(tokenizer, config.chat),
    )
    if resume_from is not None:
        trainer.resume()
    return trainer


def _broadcast_trainable(ac: ActorCritic, accelerator) -> None:
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in ac.trainable_state().values():
            dist.broadcast(p.data, src=0)
