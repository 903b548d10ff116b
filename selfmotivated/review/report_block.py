"""The "People's labels" section of `sml report`: present when RUN/review/labels.sqlite exists."""

from __future__ import annotations

from .store import LABEL_TEXT


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _share(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def review_section(run, published, config, plot_dir) -> list:
    """Report blocks (report.blocks) of the agreement between the automatic tiers, the reward model and
    people's labels; the signature of the report's sections."""
    from ..report.blocks import Para, Table
    from . import review_figures

    fig = review_figures(run.path)
    if not fig["n_labels"]:
        return [Para("The label store exists but holds no label yet.", "note")]
    who = ", ".join(f"{name} ({n})" for name, n in fig["annotators"].items())
    blocks = [Para(f"{fig['n_labels']} labels of {fig['n_rationales']} rationales, by {who} (`sml review`). "
                   f"Tiers from {fig['tiers_from']}.")]
    conf = fig["confusion"]
    blocks.append(Table(["tier \\ people"] + [LABEL_TEXT[c] for c in conf["cols"]],
                        [["not ranked" if r == "none" else f"tier {r}"] + counts for r, counts in zip(conf["rows"], conf["counts"])]))
    tv, top, rw, ia = fig["tier_vs_label"], fig["top_tier_vs_sound"], fig["reward"], fig["inter_annotator"]
    rows = [
        ["tier vs label (top = sound, bottom = wrong, between = right but unsound)",
         tv["n"], _pct(tv["agreement"]), _num(tv["kappa"])],
        ["top tier vs sound (yes/no)", top["n"], _pct(top["agreement"]), _num(top["kappa"])],
        ["right answer: tier above the bottom vs sound or right-but-unsound", fig["right_answer"]["n"],
         _pct(fig["right_answer"]["agreement"]), _num(fig["right_answer"]["kappa"])],
    ]
    rows += [[f"  {kind} rationales: tier vs label", a["n"], _pct(a["agreement"]), _num(a["kappa"])]
             for kind, a in fig["by_kind"].items()]
    rows += [[f"{p['annotators'][0]} vs {p['annotators'][1]} (same rationales)", p["n"], _pct(p["agreement"]),
              _num(p["kappa"])] for p in ia["pairs"]]
    blocks.append(Table(["comparison", "n", "agreement %", "Cohen's kappa"], rows))
    blocks.append(Para(
        f"Of the top-tier rationales people labelled, {_share(top['precision'])} are sound; of those people call "
        f"sound, {_share(top['recall'])} are top tier. AUROC for 'sound': tier {_num(fig['tier_auroc'])}, "
        f"reward-model score {_num(rw['auroc'])} (n={rw['n']}"
        + ("" if rw["n"] else "; no cached scores: `sml review RUN --scores --json` computes them") + ").",
        "note"))
    if fig["by_outcome"]:
        blocks.append(Table(["kind/outcome (the checks)"] + [LABEL_TEXT[c] for c in conf["cols"]],
                            [[key] + [counts[c] for c in conf["cols"]] for key, counts in fig["by_outcome"].items()]))
    if fig.get("n_stale"):
        blocks.append(Para(f"{fig['n_stale']} labels point at rationales that changed or are gone; left out.",
                           "warn"))
    return blocks
