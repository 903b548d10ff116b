"""Self-motivated Learning: a model ranks its own rationales by correctness, a reward model learns the
rank, and PPO with that reward model teaches the model to reason better (Feng et al., 2024)."""

__version__ = "0.1.0"
