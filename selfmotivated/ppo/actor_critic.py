"""The roles of PPO (actor, critic, reference, reward) on as few copies of the model as memory needs.

LoRA (the default) keeps one frozen backbone holding the SFT weights and puts every role on it:

    actor     = backbone + LoRA adapter "policy"                       trained
    critic    = backbone + LoRA adapter "critic" + value head          trained
    reference = backbone with every adapter disabled (the SFT model)   frozen
    reward    = backbone + the reward model's adapter + its score head frozen (see reward_fn.py)

so PPO holds one model's weights plus a few small adapters. Full fine-tuning instead trains the whole
actor, keeps a frozen copy as the reference and a third copy (with a value head) as the critic.

Shapes. A batch is prompts left-padded to width P followed by responses right-padded to width T, so
response token t of every row sits at column P + t and is predicted from column P + t - 1. Every
function here returns (B, T) tensors on response positions: the hidden states are cut to columns
P - 1 .. P + T - 2 before the LM head, which keeps (B, T, V) logits rather than (B, P + T, V).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .core import entropy_from_logits, logprobs_from_logits

POLICY, CRITIC = "policy", "critic"


class ValueHead(nn.Module):
    """A scalar per position: Linear(hidden, 1) in float32, whatever the backbone's dtype."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        # Small weights and a zero bias: the first values are ~0, the neutral guess for whitened-ish
        # returns, instead of a random offset the critic must first unlearn.
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)  # (..., H) -> (...)


def _hf_model(model):
    """The Hugging Face causal LM inside a PEFT wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states(model, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer (final-norm) hidden states of a causal LM's decoder body. (B, L) -> (B, L, H).

    Calls the body directly (not the LM's forward) so the caller picks which positions reach the LM
    head or a value head. LoRA layers live inside the body's modules, so the active adapter applies.
    Position ids count real tokens only, so a left-padded row is encoded exactly like an unpadded one.
    """
    hf = _hf_model(model)
    body = getattr(hf, hf.base_model_prefix)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = body(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def response_hidden(hidden: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """Columns whose outputs predict the response tokens: (B, P + T, H) -> (B, T, H)."""
    return hidden[:, prompt_width - 1 : -1]


class ActorCritic(nn.Module):
    """Actor, critic and reference behind three calls that all return (B, T) response-aligned tensors.

    LoRA: `policy` is a PeftModel holding adapters "policy" and "critic"; `critic` and `reference` are
    None (same backbone). Full: `policy` is a plain causal LM, `critic` another one (its body feeds the
    value head) and `reference` a frozen copy.
    """

    def __init__(self, policy, value_head: ValueHead, critic=None, reference=None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic = critic
        self.reference = reference
        self.lora = hasattr(policy, "peft_config")
        # Sampling temperature: log-probs, KL and entropy are of softmax(logits / T), the distribution the
        # rollouts were drawn from (TRL and OpenRLHF do the same); 1 is the model itself.
        self.temperature = 1.0
        # Encode a prompt once for all rows of a batch that share it (shared_prefix.py): the same numbers up
        # to float rounding, a quarter to a third fewer tokens with several samples per question.
        self.share_prompts = False
        if self.lora and (critic is not None or reference is not None):
            raise ValueError(
                "with LoRA the critic and the reference share the policy's backbone; pass neither"
            )
        if not self.lora and (critic is None or reference is None):
            raise ValueError("full fine-tuning needs a separate critic model and a frozen reference model")
        if reference is not None:
            reference.requires_grad_(False)
        # What the optimiser trains, by role. PEFT's set_adapter flips requires_grad to "only the active
        # adapter"; we switch adapters inside a step, so _activate puts these flags back every time.
        named = dict(self.named_parameters())
        self.actor_names = [n for n, p in named.items() if p.requires_grad and self._role(n) == "actor"]
        self.critic_names = [n for n, p in named.items() if p.requires_grad and self._role(n) == "critic"]
        self._trainable = [named[n] for n in self.actor_names + self.critic_names]
        self._activate(POLICY)

    def _role(self, name: str) -> str | None:
        if name.startswith("value_head.") or name.startswith("critic."):
            return "critic"
        if name.startswith("policy."):
            if not self.lora:
                return "actor"
            if f".{POLICY}." in name:
                return "actor"
            if f".{CRITIC}." in name:
                return "critic"
        return None

    @property
    def actor_parameters(self) -> list[nn.Parameter]:
        named = dict(self.named_parameters())
        return [named[n] for n in self.actor_names]

    @property
    def critic_parameters(self) -> list[nn.Parameter]:
        named = dict(self.named_parameters())
        return [named[n] for n in self.critic_names]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by name (actor then critic): what a checkpoint must hold."""
        named = dict(self.named_parameters())
        return {n: named[n] for n in self.actor_names + self.critic_names}

    # ------------------------------------------------------------------------------------------
    # adapter switching (LoRA) and the policy as a plain generator/evaluator

    def _activate(self, adapter: str) -> None:
        if not self.lora or self.policy.active_adapter == adapter:
            return
        self.policy.set_adapter(adapter, inference_mode=True)  # freezes every adapter ...
        self.mark_trainable()  # ... so re-enable exactly the trained ones

    def mark_trainable(self) -> None:
        """requires_grad on exactly the trained parameters (after PEFT changed flags: a new adapter, a switch)."""
        for p in self._trainable:
            p.requires_grad_(True)

    @contextlib.contextmanager
    def adapter(self, name: str):
        """Run a block with adapter `name` active (LoRA), then go back to the policy."""
        self._activate(name)
        try:
            yield
        finally:
            self._activate(POLICY)

    @contextlib.contextmanager
    def reference_model(self):
        """The reference model for the block: the backbone with adapters disabled, or the frozen copy."""
        if self.lora:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.reference

    # ------------------------------------------------------------------------------------------
    # the three forward passes

    def _response_states(self, model, sequences, attention_mask, prompt_width: int) -> torch.Tensor:
        """States that predict the response tokens, (B, P + T) -> (B, T, H): one pass over the rows, or with
        share_prompts one pass per distinct prompt and one over the responses on its keys/values."""
        if self.share_prompts:
            from ..shared_prefix import response_hidden_shared

            h = response_hidden_shared(model, sequences, attention_mask, prompt_width)
            if h is not None:
                return h
        return response_hidden(hidden_states(model, sequences, attention_mask), prompt_width)

    def policy_logits(self, sequences, attention_mask, prompt_width: int) -> torch.Tensor:
        """Next-token logits of the actor at response positions. (B, P + T) -> (B, T, V)."""
        self._activate(POLICY)
        h = self._response_states(self.policy, sequences, attention_mask, prompt_width)
        return self._tempered(_hf_model(self.policy).get_output_embeddings()(h))

    def _tempered(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.temperature == 1.0 else logits / self.temperature

    def policy_logprobs(self, sequences, attention_mask, prompt_width: int, with_entropy: bool = False):
        """log pi(response token) (B, T), and the per-position entropy (B, T) when asked (else None)."""
        logits = self.policy_logits(sequences, attention_mask, prompt_width)  # (B, T, V)
        labels = sequences[:, prompt_width:]  # (B, T)
        logprobs = logprobs_from_logits(logits, labels)
        entropy = entropy_from_logits(logits) if with_entropy else None
        return logprobs, entropy

    @torch.no_grad()
    def reference_logits(self, sequences, attention_mask, prompt_width: int) -> torch.Tensor:
        """Next-token logits of the frozen SFT model at response positions. (B, P + T) -> (B, T, V)."""
        with self.reference_model() as ref:
            h = self._response_states(ref, sequences, attention_mask, prompt_width)
            return self._tempered(_hf_model(ref).get_output_embeddings()(h))

    def reference_logprobs(self, sequences, attention_mask, prompt_width: int) -> torch.Tensor:
        """log pi_ref(response token) under the frozen SFT model. (B, P + T) -> (B, T)."""
        logits = self.reference_logits(sequences, attention_mask, prompt_width)  # (B, T, V)
        return logprobs_from_logits(logits, sequences[:, prompt_width:])

    def values(self, sequences, attention_mask, prompt_width: int) -> torch.Tensor:
        """V(state before each response token) from the critic. (B, P + T) -> (B, T)."""
        if self.lora:
            with self.adapter(CRITIC):
                h = self._response_states(self.policy, sequences, attention_mask, prompt_width)
        else:
            h = self._response_states(self.critic, sequences, attention_mask, prompt_width)
        return self.value_head(h)


# ----------------------------------------------------------------------------------------------
# building the roles from the SFT model


def lora_config(r: int, alpha: int, dropout: float, target: str):
    from peft import LoraConfig

    targets = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def merge_if_adapter(model):
    """A PEFT model (an SFT adapter on its base) merged into plain weights: the SFT weights as one model."""
    if hasattr(model, "peft_config"):
        return model.merge_and_unload()
    return model


def reward_adapter_parts(folder):
    """(LoraConfig for a causal LM, LoRA tensors, score head {"weight": (1, H), "bias": (1,)}) of a reward
    adapter folder written by `sml reward` (a SEQ_CLS LoRA adapter with the score head in modules_to_save)."""
    from pathlib import Path

    from peft import LoraConfig
    from safetensors.torch import load_file

    folder = Path(folder)
    config = LoraConfig.from_pretrained(str(folder))
    config.modules_to_save = None  # the head becomes ours (a float32 Linear), not a module of the causal LM
    config.task_type = "CAUSAL_LM"
    config.inference_mode = False
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    lora = {k: v for k, v in tensors.items() if "lora_" in k}
    head_keys = [k for k in tensors if k.endswith("score.weight")]
    if len(head_keys) != 1:
        raise ValueError(
            f"{folder}: expected one score head (score.weight) in adapter_model.safetensors, "
            f"found {head_keys or 'none'}"
        )
    weight = tensors[head_keys[0]].float()
    bias_key = head_keys[0][: -len("weight")] + "bias"
    bias = tensors[bias_key].float() if bias_key in tensors else torch.zeros(1)
    return config, lora, {"weight": weight, "bias": bias}


def load_adapter_weights(model, adapter: str, lora: dict[str, torch.Tensor], source: str) -> None:
    """Put saved LoRA tensors (PEFT's saved key names) into adapter `adapter` of `model`; all must land."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, lora, adapter_name=adapter)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    missing = [k for k in result.missing_keys if f".{adapter}." in k and "lora_" in k]
    if unexpected or missing:
        raise ValueError(
            f"{source} does not fit the policy's backbone: {len(unexpected)} unexpected and "
            f"{len(missing)} missing LoRA tensors (e.g. {(unexpected or missing)[:3]})"
        )


def build_actor_critic(
    sft_model, finetune: str = "lora", lora=None, critic_from: str | None = None
) -> ActorCritic:
    """Actor, critic and reference from the SFT model (a plain causal LM, or a PEFT one, merged first).

    finetune "lora": a fresh adapter "policy" (LoRA's B = 0, so the actor starts exactly at the SFT
    model) and an adapter "critic" on the shared backbone. "full": the model is the actor; deep copies
    become the frozen reference and the critic body. critic_from: a reward adapter folder (`sml
    reward`) whose adapter and score head start the critic (METHOD.md: "value model from the reward
    model"); None: a fresh adapter (LoRA) or the SFT weights (full) with a new value head.
    """
    model = merge_if_adapter(sft_model)
    hidden = model.config.hidden_size
    head = ValueHead(hidden).to(next(model.parameters()).device)
    critic_parts = reward_adapter_parts(critic_from) if critic_from else None
    if critic_parts is not None:
        with torch.no_grad():
            head.linear.weight.copy_(critic_parts[2]["weight"].reshape(1, hidden))
            head.linear.bias.copy_(critic_parts[2]["bias"].reshape(1))
    if finetune == "lora":
        from peft import get_peft_model

        if lora is None:
            raise ValueError("finetune='lora' needs a LoraConfig")
        model.requires_grad_(False)
        policy = get_peft_model(model, lora, adapter_name=POLICY)
        policy.add_adapter(CRITIC, critic_parts[0] if critic_parts else lora)
        if critic_parts is not None:
            load_adapter_weights(policy, CRITIC, critic_parts[1], f"reward model {critic_from}")
        # Both adapters train (add_adapter leaves the new one frozen until it is activated).
        for name, p in policy.named_parameters():
            p.requires_grad_(f".{POLICY}." in name or f".{CRITIC}." in name)
        return ActorCritic(policy, head)
    if finetune == "full":
        reference = copy.deepcopy(model).eval()
        critic = copy.deepcopy(model)
        if critic_parts is not None:
            from peft import get_peft_model

            critic = get_peft_model(critic, critic_parts[0], adapter_name=CRITIC)
            load_adapter_weights(critic, CRITIC, critic_parts[1], f"reward model {critic_from}")
            critic = critic.merge_and_unload()
        model.requires_grad_(True)
        critic.requires_grad_(True)
        return ActorCritic(model, head, critic=critic, reference=reference)
    raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
