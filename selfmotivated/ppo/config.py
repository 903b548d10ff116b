"""`PPOConfig`, the settings of `sml ppo`, kept apart from the trainer so that reading or checking a
config (the CLI, the pipeline) does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataConfig

DEFAULT_LR = {"lora": 2e-5, "full": 1e-6}
DEFAULT_CRITIC_LR = {"lora": 1e-4, "full": 1e-5}


HELDOUT = "heldout"  # eval_split: training questions PPO does not train on


@dataclass
class PPOConfig:
    """`sml ppo`: PPO of the SFT policy against the reward model."""

    # -- models and folders
    run_dir: str | None = field(default=None, metadata={
        "help": "pipeline run folder: defaults RUN_DIR/sft/model, RUN_DIR/reward/model, RUN_DIR/ppo"})
    sft_model: str | None = field(default=None, metadata={
        "help": "the SFT model: start of the policy and the frozen reference (a folder, a known name, or a "
                "LoRA adapter folder, merged first)"})
    reward_model: str | None = field(default=None, metadata={
        "help": "reward model folder written by `sml reward` (LoRA adapter + score head, or a full model)"})
    out: str | None = field(default=None, metadata={"help": "output folder (default RUN_DIR/ppo)"})
    method: str = field(default="lora", metadata={
        "help": "lora: actor and critic are adapters on one frozen SFT backbone (the reference); full: train "
                "every weight, with separate reference and critic copies (on a GPU use --dtype float32)",
        "choices": ["lora", "full"]})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the policy and critic adapters"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA dropout; 0 keeps the old and new log-probs of a PPO step comparable"})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "modules LoRA adapts: all-linear, or comma-separated names (q_proj,v_proj)"})
    critic_init: str = field(default="reward", metadata={
        "help": "start the critic from the reward model (its LoRA adapter and score head; falls back to sft "
                "when the reward model is not a LoRA adapter on the SFT model) or from the SFT model with a "
                "new value head", "choices": ["reward", "sft"]})
    dtype: str = field(default="auto", metadata={
        "help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16"})
    cpu: bool = field(default=False, metadata={"help": "run on the CPU even when a GPU is there"})
    # -- questions and prompts
    prompt: str = field(default="zero_shot", metadata={
        "help": "zero_shot or few_shot chain-of-thought prompts", "choices": ["zero_shot", "few_shot"]})
    exemplars: str | None = field(default=None, metadata={
        "help": "few-shot exemplars (see `sml eval --help`)"})
    num_exemplars: int | None = field(default=None, metadata={"help": "use only the first N exemplars"})
    chat: str = field(default="auto", metadata={
        "help": "use the chat template: auto, always or never", "choices": ["auto", "always", "never"]})
    templates: str | None = field(default=None, metadata={"help": "JSON file overriding our prompt templates"})
    # -- rollouts
    iterations: int = field(default=100, metadata={"help": "PPO iterations (rollout batch + updates each)"})
    prompts_per_iteration: int = field(default=16, metadata={
        "help": "questions per iteration, over all processes (each process takes an equal share)"})
    samples_per_prompt: int = field(default=4, metadata={
        "help": "responses sampled per question; the group baseline (advantage rloo) compares them"})
    max_new_tokens: int = field(default=256, metadata={
        "help": "longest response in tokens (the pipeline sets the final evaluation's, so PPO is judged on "
                "what the test measures)"})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature; log-probs, KL and entropy are taken of the policy at this temperature "
                "(logits / T, as TRL and OpenRLHF do), the distribution the rollouts came from"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1: off; < 1 is off-policy)"})
    backend: str = field(default="engine", metadata={
        "help": "generation backend: engine or hf", "choices": ["engine", "hf"]})
    generation_batch_size: int = field(default=64, metadata={
        "help": "sequences decoded at once (the engine's full width: rows in flight are nearly free on a CPU)"})
    # -- the sequence reward
    reward: str = field(default="rm", metadata={
        "help": "rm: the learned reward model's score (the method); checker: 1 when our answer checker finds "
                "the training question's gold answer, else 0 (the verifiable-reward control); rm+checker: both",
        "choices": ["rm", "checker", "rm+checker"]})
    checker_reward: float = field(default=1.0, metadata={
        "help": "reward of a correct final answer when `reward` includes the checker"})
    truncation_penalty: float = field(default=1.0, metadata={
        "help": "subtracted from the score of a response cut off at max_new_tokens (0: off): unfinished text "
                "must not win by running on"})
    min_reward_auroc: float = field(default=0.55, metadata={
        "help": "refuse to start when the reward model's validity report gives an AUROC of score against the "
                "answer checker's verdict below this, on fresh samples of held-out training questions (0: off); "
                "with advantage rloo, the AUROC among each question's own samples, the order PPO learns from"})
    # -- PPO
    learning_rate: float | None = field(default=None, metadata={
        "help": f"actor learning rate (default {DEFAULT_LR['lora']} with LoRA, {DEFAULT_LR['full']} full)"})
    critic_learning_rate: float | None = field(default=None, metadata={
        "help": f"critic learning rate (default {DEFAULT_CRITIC_LR['lora']} with LoRA, "
                f"{DEFAULT_CRITIC_LR['full']} full)"})
    advantage: str = field(default="rloo", metadata={
        "help": "rloo: a response's return minus the mean return of the other responses to the same question "
                "(no critic; the reward model was trained on differences within a question); gae: a critic "
                "and GAE (warmed up first, see critic_warmup_iterations)", "choices": ["rloo", "gae"]})
    critic_warmup_iterations: int = field(default=2, metadata={
        "help": "with gae: the first N iterations train only the critic, so its values explain the returns "
                "before they steer the actor"})
    ppo_epochs: int = field(default=2, metadata={
        "help": "passes over each rollout batch (with several minibatches each, the ratio leaves 1 and the "
                "clip acts; target_kl ends them early)"})
    mini_batch_size: int = field(default=16, metadata={"help": "samples per optimizer step, per process"})
    minibatch_by_question: bool = field(default=False, metadata={
        "help": "minibatches of whole questions (the questions shuffled, each one's samples together, as GRPO "
                "trainers batch groups) instead of shuffled samples: with share_prompts a minibatch encodes "
                "each prompt once for all its samples, so an update reads a few prompts instead of nearly one "
                "per sample (off: the order of runs made before it)"})
    micro_batch_size: int = field(default=4, metadata={
        "help": "samples per forward/backward pass (gradients accumulate up to mini_batch_size)"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon"})
    clip_range_value: float = field(default=0.2, metadata={
        "help": "value clip around the rollout values (0: off)"})
    gamma: float = field(default=1.0, metadata={"help": "discount of GAE"})
    lam: float = field(default=0.95, metadata={"help": "lambda of GAE"})
    kl_coef: float = field(default=0.05, metadata={
        "help": "beta, the per-token KL penalty (initial value if adaptive)"})
    kl_estimator: str = field(default="k1", metadata={
        "help": "per-token KL estimator in the reward: k1, k2, k3", "choices": ["k1", "k2", "k3"]})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "adapt beta toward kl_target (Ziegler et al. 2019)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive KL: target KL per sequence (nats)"})
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL: horizon in samples"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus in the policy loss (0: off)"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "clip each of actor and critic gradients (0: off)"})
    whiten_advantages: bool = field(default=True, metadata={"help": "normalise advantages per rollout batch"})
    target_kl: float = field(default=0.05, metadata={
        "help": "stop an iteration's updates after the minibatch whose approx KL(old || new) per token "
                "exceeds this (0: off)"})
    # -- speed (each is the same PPO up to float rounding, so neither counts in a stage's fingerprint; off: the
    #    plain path, `sml bench ppo`'s baseline)
    reuse_sampler_logprobs: bool = field(default=True, metadata={
        "help": "take the old log-probs and entropies from the sampler (the same policy and temperature; they "
                "match a forward pass to float rounding, tested) instead of a forward pass"})
    share_prompts: bool | None = field(default=None, metadata={
        "help": "encode a question's prompt once for all its samples in every forward pass (reference, reward "
                "model, update), micro-batches holding a question's samples together (default: on a CPU only; "
                "on a GPU a small model's pass costs its kernel launches, not its FLOPs, and two passes cost "
                "more than one: 0.85x measured on an H200)"})
    pack_weights: bool = field(default=True, metadata={
        "help": "on CPU in float32, the rollouts, the no-grad passes (reward scoring, reference) and the "
                "update's frozen layers read oneDNN-packed copies of the weights, made once per phase (~1.25x "
                "faster matmuls; selfmotivated/packed.py)"})
    # -- answer-based reward terms (ablations, off by default)
    correct_bonus: float = field(default=0.0, metadata={
        "help": "added to the score when the response's final answer matches the training question's gold"})
    no_answer_penalty: float = field(default=0.0, metadata={
        "help": "subtracted from the score when the response states no final answer"})
    # -- periodic test accuracy
    eval_steps: int = field(default=10, metadata={
        "help": "test accuracy every N iterations and at 0 (0: never)"})
    eval_split: str = field(default="test", metadata={
        "help": "split evaluated during PPO; 'heldout': the eval_limit training questions right after PPO's own "
                "(data.limit), so that choosing the checkpoint never looks at the test split"})
    eval_limit: int | None = field(default=100, metadata={
        "help": "evaluate the first N questions of that split"})
    # -- failure guard
    guard_action: str = field(default="stop", metadata={
        "help": "when the guard trips: stop (keeping the last good checkpoint as the model) or rollback to it",
        "choices": ["stop", "rollback"]})
    guard_max_kl: float = field(default=50.0, metadata={
        "help": "trip above this KL per sequence, nats (0: off)"})
    guard_min_entropy: float = field(default=0.02, metadata={
        "help": "trip below this mean entropy per token, nats (0: off)"})
    guard_min_response_length: float = field(default=0.0, metadata={
        "help": "trip below this mean response length in tokens (0: off)"})
    guard_accuracy_drop: float = field(default=0.05, metadata={
        "help": "trip when test accuracy falls this far below its best while the reward rises (0: off)"})
    guard_patience: int = field(default=3, metadata={
        "help": "iterations in a row KL/entropy/length must be out of bounds before the guard trips"})
    max_rollbacks: int = field(default=2, metadata={"help": "rollbacks allowed before the run stops"})
    # -- checkpoints, runtime
    save_steps: int = field(default=10, metadata={"help": "write a resumable checkpoint every N iterations"})
    save_total_limit: int = field(default=2, metadata={
        "help": "checkpoints kept besides the last good one (oldest deleted first)"})
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in --out"})
    stop_after_steps: int = field(default=0, metadata={
        "help": "stop after this many iterations as if interrupted, without the final save (tests)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, prompt order and sampling"})
    tensorboard: bool = field(default=True, metadata={"help": "also log to OUT/tensorboard"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    data: DataConfig = field(default_factory=lambda: DataConfig(split="train"), metadata={"cli": False})

    def __post_init__(self):
        if isinstance(self.data, dict):
            from ..config import build_config

            self.data = build_config(DataConfig, {"split": "train", **self.data}, "ppo.data")
        choices = {"method": ("lora", "full"), "critic_init": ("reward", "sft"), "prompt": ("zero_shot", "few_shot"),
                   "kl_estimator": ("k1", "k2", "k3"), "guard_action": ("stop", "rollback"),
                   "backend": ("engine", "hf"), "reward": ("rm", "checker", "rm+checker"),
                   "advantage": ("rloo", "gae")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = ("iterations", "prompts_per_iteration", "samples_per_prompt", "max_new_tokens", "ppo_epochs",
                    "mini_batch_size", "micro_batch_size", "generation_batch_size", "lora_r", "save_steps",
                    "save_total_limit", "guard_patience")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("clip_range", "clip_range_value", "kl_coef", "entropy_coef", "max_grad_norm", "target_kl",
                        "eval_steps", "stop_after_steps", "max_rollbacks", "guard_max_kl", "guard_min_entropy",
                        "guard_min_response_length", "guard_accuracy_drop", "truncation_penalty",
                        "min_reward_auroc", "critic_warmup_iterations")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.advantage == "rloo" and self.samples_per_prompt < 2:
            raise ValueError("advantage 'rloo' compares the responses to one question: samples_per_prompt must be "
                             f">= 2, got {self.samples_per_prompt} (or use advantage 'gae')")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0: PPO needs sampled rollouts, not greedy ones")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LR[self.method]
        if self.critic_learning_rate is None:
            self.critic_learning_rate = DEFAULT_CRITIC_LR[self.method]
        if self.learning_rate < 0 or self.critic_learning_rate < 0:
            raise ValueError("learning rates must be >= 0")


def shares_prompts(config: PPOConfig, device_type: str) -> bool:
    """`config.share_prompts`, with its default (None) resolved for the device type ("cpu", "cuda") the policy
    runs on."""
    if config.share_prompts is not None:
        return config.share_prompts
    return device_type == "cpu"
