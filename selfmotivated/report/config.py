"""`sml report`'s settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReportConfig:
    """`sml report`: a report of one run folder, or a comparison of several."""

    runs: list[str] = field(default_factory=list, metadata={
        "help": "run folders: one gives RUN/report.md and RUN/report.html; several give a comparison",
        "cli": False})  # positional on the command line: `sml report RUN [RUN ...]`
    out: str | None = field(default=None, metadata={
        "help": "output folder (default: the run folder itself; for a comparison, <first run>/compare)"})
    published: list[str] = field(default_factory=lambda: ["gpt2_124m_fine_tune_cot", "random"], metadata={
        "help": "published rows shown beside ours (keys of selfmotivated/resources/published.json)"})
    max_kl: float = field(default=20.0, metadata={
        "help": "flag a KL blow-up when KL(policy || SFT) per sequence exceeds this many nats"})
    entropy_drop: float = field(default=0.5, metadata={
        "help": "flag an entropy collapse when the policy's entropy ends below this fraction of its start"})
    min_entropy: float = field(default=0.05, metadata={
        "help": "flag an entropy collapse when the entropy ends below this many nats per token"})
    length_drop: float = field(default=0.5, metadata={
        "help": "flag a length collapse when responses end shorter than this fraction of their start length"})
    accuracy_drop: float = field(default=0.03, metadata={
        "help": "flag reward hacking when test accuracy falls this much (a fraction) below its best while "
                "the reward-model score rises"})
    plots: bool = field(default=True, metadata={
        "help": "draw the PNG plots (off: tables and text only, faster)"})

    def __post_init__(self):
        self.runs = [str(r) for r in self.runs]
        self.published = list(self.published)
        if not self.runs:
            raise ValueError("report needs at least one run folder")
        for name in ("entropy_drop", "length_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
