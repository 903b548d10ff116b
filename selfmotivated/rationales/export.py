"""Reading a run folder's rationales: statistics, one question in full, export, and the loaders that
the SFT and reward-model stages call. The rank config is applied here, at read time, so tier rules,
the pair cap and leak filtering can change without regenerating anything.

Export layout (OUT):
    sft.jsonl        top-tier rationales: prompt (evaluation format), response (body + gold answer line)
    pairs.jsonl      reward-model pairs: prompt, chosen, rejected (+ tiers, kinds, rationale ids)
    rationales.jsonl every stored rationale with its outcome, tier and status (for people to read)
    stats.json       `rationale_stats`
With fmt="hf" the three sets are `datasets.save_to_disk` folders OUT/sft, OUT/pairs, OUT/rationales.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from .rank import RankConfig, compute_stats, rank_all
from .store import STORE_NAME, RationaleStore

EXPORT_FORMATS = ("jsonl", "hf")
_SETS = ("sft", "pairs", "rationales")
_ROW_KEYS = (
    "rid",
    "question_id",
    "kind",
    "target",
    "sample_index",
    "text",
    "response",
    "answer",
    "forced",
    "forced_text",
    "leak",
    "outcome",
    "tier",
    "status",
    "finish_reason",
    "n_tokens",
    "fingerprint",
    "params",
)


def _rank(run_dir, rank_config: RankConfig | None) -> tuple[dict, dict, RankConfig, RationaleStore]:
    config = rank_config or RankConfig()
    store = RationaleStore(run_dir, readonly=True)
    try:
        questions = store.questions()
        ranking = rank_all(questions, store.rationales(), config)
    except BaseException:
        store.close()
        raise
    return questions, ranking, config, store


def _stats(run_dir, questions: dict, ranking: dict, config: RankConfig, store: RationaleStore) -> dict:
    stats = compute_stats(questions, ranking, config)
    in_use = store.fingerprints_in_use()
    stats["settings"] = [
        {"fingerprint": fp, "n_rationales": in_use.get(fp, 0), **settings}
        for fp, settings in store.settings().items()
        if fp in in_use
    ]
    stats["run_dir"] = str(run_dir)
    return stats


def rationale_stats(run_dir: str | Path, rank_config: RankConfig | None = None) -> dict:
    """Counts per tier and dataset, duplicates, leaks, pairs and shares, for the store in `run_dir`."""
    questions, ranking, config, store = _rank(run_dir, rank_config)
    with store:
        return _stats(run_dir, questions, ranking, config, store)


def format_stats(stats: dict) -> str:
    """A table for people: one line per dataset and one for all."""
    tiers = sorted(
        {t for s in [stats, *stats["by_dataset"].values()] for t in s["tiers"]}, key=int, reverse=True
    )
    head = (
        ["dataset", "questions", "rationales", "ranked"]
        + [f"tier {t}" for t in tiers]
        + ["excluded", "dups", "leaks", "pairs", "sft", "top-tier q%", "paired q%"]
    )

    def line(name: str, s: dict) -> list[str]:
        return (
            [name, str(s["n_questions"]), str(s["n_rationales"]), str(s["n_ranked"])]
            + [str(s["tiers"].get(t, 0)) for t in tiers]
            + [
                str(s["n_excluded"]),
                str(s["n_duplicates_skipped"]),
                str(s["n_leaks"]),
                str(s["n_pairs"]),
                str(s["n_sft"]),
                f"{100 * s['share_questions_top_tier']:.1f}",
                f"{100 * s['share_questions_with_pair']:.1f}",
            ]
        )

    table = [head] + [line(d, s) for d, s in stats["by_dataset"].items()]
    if len(stats["by_dataset"]) != 1:
        table.append(line("all", stats))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    out = [
        f"rationales in {stats.get('run_dir', '?')}: {stats['n_rationales']} for {stats['n_questions']} "
        f"questions (top tier {stats['top_tier']})"
    ]
    out += [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in table
    ]
    words = ", ".join(f"tier {t}: {w}" for t, w in stats["mean_words"].items())
    out.append(f"mean length ({stats['length_unit']}): {words or '-'}")
    cap = stats["rank_config"]["max_pairs_per_question"]
    out.append(
        f"leak rate {100 * stats['leak_rate']:.1f}% of hinted rationales "
        f"({'filtered' if stats['leaks_filtered'] else 'kept'}); pairs {stats['n_pairs']} "
        f"(before the cap of {cap if cap is not None else 'none'} per question: {stats['n_pairs_uncapped']})"
    )
    out.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in stats["outcomes"].items()))
    for s in stats.get("settings", []):
        out.append(
            f"settings {s['fingerprint']}: {s['n_rationales']} rationales, model {s.get('model')}, "
            f"prompt {s.get('prompt')}, temperature {s.get('temperature')}, seed {s.get('seed')}, "
            f"forcing {'on' if s.get('answer_forcing') else 'off'}"
        )
    return "\n".join(out)


def show_question(run_dir: str | Path, question_id: str, rank_config: RankConfig | None = None) -> str:
    """One question with every rationale: kind, target, answers, consistency, tier, leak, status."""
    questions, ranking, config, store = _rank(run_dir, rank_config)
    store.close()
    if question_id not in questions:
        known = list(questions)
        hint = f"; stored ids look like {', '.join(known[:3])}" if known else "; the store holds no questions"
        raise ValueError(f"question {question_id!r} is not in {Path(run_dir) / STORE_NAME}{hint}")
    q = questions[question_id]
    result = ranking["per_question"][question_id]
    out = [f"question {q['id']} ({q['dataset']}, {q['answer_type']})", q["question"]]
    if q["choices"]:
        out.append("choices: " + ", ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(q["choices"])))
    out.append(f"gold: {q['gold']}")
    out.append(
        f"{len(result['all'])} rationales, {len(result['ranked'])} ranked, {len(result['pairs'])} pairs"
    )
    for r in result["all"]:
        consistent = "-" if r["kind"] == "free" else ("yes" if r["outcome"] == "consistent" else "no")
        forced = "-" if r["forced_text"] is None else (r["forced"] or "none")
        out.append("")
        out.append(
            f"[{r['rid']}] {r['kind']} #{r['sample_index']}  target {r['target'] or '-'}  "
            f"answer {r['answer'] or 'none'}  forced {forced}  consistent {consistent}  "
            f"outcome {r['outcome']}  tier {r['tier'] if r['tier'] is not None else 'none'}  "
            f"leak {'yes' if r['leak'] else 'no'}  status {r['status']}"
        )
        out.append(textwrap.indent(r["text"].strip() or "(empty)", "    "))
    return "\n".join(out)


def _rationale_rows(questions: dict, ranking: dict) -> list[dict]:
    rows = []
    for qid, result in ranking["per_question"].items():
        for r in result["all"]:
            rows.append({"dataset": questions[qid]["dataset"], **{k: r[k] for k in _ROW_KEYS}})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _save_hf(path: Path, rows: list[dict]) -> None:
    import shutil

    from datasets import Dataset

    # params holds a dict per row; as JSON text it keeps one Arrow type even if its keys change across runs.
    rows = [{**r, "params": json.dumps(r["params"], sort_keys=True)} if "params" in r else r for r in rows]
    dataset = Dataset.from_list(rows)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def export(
    run_dir: str | Path, out_dir: str | Path, fmt: str = "jsonl", rank_config: RankConfig | None = None
) -> dict:
    """Write the SFT set, the pair set, every rationale and the statistics to `out_dir`."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    questions, ranking, config, store = _rank(run_dir, rank_config)
    with store:
        stats = _stats(run_dir, questions, ranking, config, store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = {
        "sft": ranking["sft"],
        "pairs": ranking["pairs"],
        "rationales": _rationale_rows(questions, ranking),
    }
    paths = {}
    for name, rows in sets.items():
        if fmt == "jsonl":
            paths[name] = out / f"{name}.jsonl"
            _write_jsonl(paths[name], rows)
        else:
            paths[name] = out / name
            _save_hf(paths[name], rows)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return {
        "out_dir": str(out),
        "format": fmt,
        "n_sft": len(sets["sft"]),
        "n_pairs": len(sets["pairs"]),
        "n_rationales": len(sets["rationales"]),
        "files": {k: str(v) for k, v in paths.items()},
    }


def _load_set(path: str | Path, name: str, rank_config: RankConfig | None) -> list[dict]:
    path = Path(path)
    if (path / STORE_NAME).is_file():
        _, ranking, _, store = _rank(path, rank_config)
        store.close()
        return ranking[name]
    if rank_config is not None:
        raise ValueError(
            f"{path}: an exported set is already ranked; a rank config applies to a run folder "
            f"(one holding {STORE_NAME})"
        )
    if (path / f"{name}.jsonl").is_file():
        with (path / f"{name}.jsonl").open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if (path / name / "dataset_info.json").is_file():
        from datasets import load_from_disk

        return load_from_disk(str(path / name)).to_list()
    raise FileNotFoundError(
        f"{path}: neither a run folder ({STORE_NAME}) nor an export ({name}.jsonl or "
        f"{name}/ saved with datasets)"
    )


def load_sft_set(path: str | Path, rank_config: RankConfig | None = None) -> list[dict]:
    """The SFT rows (prompt, messages, response, ...) of a run folder (ranked now, with `rank_config`)
    or of an export folder (as exported)."""
    return _load_set(path, "sft", rank_config)


def load_pairs(path: str | Path, rank_config: RankConfig | None = None) -> list[dict]:
    """The reward-model pairs (prompt, chosen, rejected, ...) of a run folder or an export folder."""
    return _load_set(path, "pairs", rank_config)
