"""PPO against the reward model: the maths (core.py) and, elsewhere, the training loop."""
