"""`sml review`'s settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ReviewConfig:
    """`sml review RUN`: a local page where people label a run's rationales, and the figures of how well the
    automatic tiers and the reward model agree with them."""

    run: str = field(default="", metadata={
        "help": "run folder holding rationales.sqlite (or, for --json/--export, only review/labels.sqlite)",
        "cli": False})  # positional on the command line: `sml review RUN`
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on; anything but the loopback address shows the page (and lets anyone "
                "who can reach it label) to the network, so it is only used when given, with a warning"})
    port: int = field(default=8765, metadata={"help": "port to listen on (0: any free port)"})
    annotator: str = field(default="", metadata={
        "help": "the name labels are stored under (default: $USER); the page can switch it"})
    export: str | None = field(default=None, metadata={
        "help": "write every label with its rationale to this JSONL file and exit (no server)"})
    scores: bool = field(default=False, metadata={
        "help": "compute the reward model's score of every rationale (RUN/reward/model) into "
                "RUN/review/scores.jsonl: in the background while the page is served, before the figures "
                "with --json/--export. Without it, scores already cached there are shown"})
    score_batch_size: int = field(default=8, metadata={"help": "rationales per reward-model forward pass"})
    device: str = field(default="cpu", metadata={"help": "device of the reward model when scoring (cpu, cuda)"})
    page_size: int = field(default=10, metadata={"help": "questions per page"})
    figures_only: bool = field(default=False, metadata={
        "help": "compute the figures (and the export) without serving the page", "cli": False})

    def __post_init__(self):
        self.run = str(self.run)
        if not self.run:
            raise ValueError("review needs a run folder")
        self.annotator = (self.annotator or os.environ.get("USER") or "annotator").strip()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {self.score_batch_size}")

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS
