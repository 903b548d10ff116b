"""Stage 1 of Self-motivated Learning: the model's own rationales, checked, stored and ranked.

    from selfmotivated.rationales import GenerateConfig, run_generate, rationale_stats, load_pairs
    run_generate(GenerateConfig(run_dir="runs/a", model="tiny-random"))   # -> runs/a/rationales.sqlite
    print(format_stats(rationale_stats("runs/a")))
    pairs = load_pairs("runs/a")                                          # reward-model pairs
    sft = load_sft_set("runs/a")                                          # top-tier rationales

Modules: `generate` (sampling and checking), `checks` (answer line, forcing, leaks), `wrong` (wrong
answers to rationalise), `store` (the resumable SQLite store), `rank` (tiers, pairs, SFT set: pure
functions), `export` (stats, show, export, loaders).
"""

from .checks import LEAK_PATTERNS, detect_leak, reasoning_before_answer, split_answer_line
from .export import (
    EXPORT_FORMATS,
    export,
    format_stats,
    load_pairs,
    load_sft_set,
    rationale_stats,
    show_question,
)
from .generate import GenerateConfig, run_generate
from .rank import DEFAULT_TIERS, OUTCOMES, RankConfig, outcome, parse_tier_rules, rank_all
from .store import KINDS, STORE_NAME, RationaleStore
from .wrong import WRONG_STRATEGIES, choose_wrong_answers

__all__ = [
    "GenerateConfig",
    "run_generate",
    "RankConfig",
    "rationale_stats",
    "format_stats",
    "show_question",
    "export",
    "load_sft_set",
    "load_pairs",
    "choose_wrong_answers",
    "outcome",
    "parse_tier_rules",
    "rank_all",
    "reasoning_before_answer",
    "split_answer_line",
    "detect_leak",
    "RationaleStore",
    "DEFAULT_TIERS",
    "OUTCOMES",
    "KINDS",
    "STORE_NAME",
    "LEAK_PATTERNS",
    "EXPORT_FORMATS",
    "WRONG_STRATEGIES",
]
