"""`sml`: the command line. Each command parses flags (over an optional `--config` YAML file) into a stage's
config dataclass and calls that stage's function; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import KeyValues, add_config_args, config_from_args, load_yaml


def _yaml_section(args, section: str | None = None) -> dict:
    if not getattr(args, "config", None):
        return {}
    values = load_yaml(args.config)
    return values.get(section, {}) if section else values


def _print(result: dict, as_json: bool, human=None) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(human(result) if human else json.dumps(result, indent=2))


# --- stages that read a dataset: eval, generate ------------------------------------------------------------
def _add_data_stage(sub, name: str, help_text: str, cls, split: str, func, out_field: str = "out"):
    """A command whose config has a nested `data: DataConfig`: flags for both, YAML keys with `data:` nested."""
    from .config import MISSING
    from .data import DataConfig

    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", help="YAML file with the settings (flags override it; data settings under 'data')")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--out", *([f"--{out_field.replace('_', '-')}"] if out_field != "out" else []), dest=out_field,
                   default=MISSING, help="output folder")
    add_config_args(p, cls, skip=("data", out_field))
    add_config_args(p.add_argument_group("data"), DataConfig)
    p.set_defaults(func=func, config_cls=cls, data_split=split)


def _data_stage_config(args):
    from .data import DataConfig

    values = _yaml_section(args)
    data_values = {"split": args.data_split, **values.pop("data", {})}
    source = args.config or "flags"
    config = config_from_args(args.config_cls, args, values, source=source)
    config.data = config_from_args(DataConfig, args, data_values, source=source)
    return config


def _run_eval(args):
    from .evaluate import run_eval

    config = _data_stage_config(args)
    metrics = run_eval(config)
    _print(metrics, args.json, lambda m: (
        f"{m['dataset']} {m['split']}: accuracy {m['accuracy']:.3f} ({m['n_correct']}/{m['n']}, "
        f"95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}), no answer {m['n_no_answer']}, "
        f"{m['seconds']} s; written to {config.out}"))


def _run_generate(args):
    from .rationales import format_stats, rationale_stats, run_generate

    config = _data_stage_config(args)
    result = run_generate(config)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_stats(rationale_stats(config.run_dir)))


def _add_eval(sub):
    from .evaluate import EvalConfig

    _add_data_stage(sub, "eval", "accuracy of a model on a dataset split (chain-of-thought, greedy)",
                    EvalConfig, "test", _run_eval)


def _add_calibrate(sub):
    from .calibrate import CalibrateConfig

    _add_data_stage(sub, "calibrate", "greedy accuracy and pass@k of a task at several difficulty settings; picks "
                    "the setting to train on", CalibrateConfig, "train", _run_calibrate)


def _run_calibrate(args):
    from .calibrate import format_summary, run_calibrate

    _print(run_calibrate(_data_stage_config(args)), args.json, format_summary)


def _add_compare(sub):
    p = sub.add_parser("compare", help="paired difference, bootstrap 95%% interval and McNemar p of models "
                                       "evaluated on the same questions")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a run folder (every pair of its model rows), or two "
                                                          "evaluation folders (predictions.jsonl) or two run folders")
    p.add_argument("--reward-models", action="store_true", help="compare the two runs' reward models instead: "
                   "their within-question AUROC on the same validity samples (reward/validity_samples.jsonl "
                   "drawn by one policy with one seed), b minus a, with a 95%% bootstrap interval")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_compare)


def _run_compare(args):
    from .stats import compare_all, compare_eval_dirs, format_comparisons

    if len(args.dirs) > 2:
        raise ValueError("compare takes one run folder or two folders")
    if args.reward_models:
        return _compare_reward_models(args)
    result = compare_all(args.dirs[0]) if len(args.dirs) == 1 else compare_eval_dirs(*args.dirs)
    if not result:
        raise ValueError(f"{args.dirs[0]}: no two model rows with per-question results on the same dataset")
    flat = all("diff" in v for v in result.values())
    _print(result, args.json, lambda r: format_comparisons(r) if flat else "\n".join(
        f"{dataset}:\n{format_comparisons(pairs)}" for dataset, pairs in r.items()))


def _compare_reward_models(args):
    from pathlib import Path

    from .validity import SAMPLES_FILE, compare_within_question

    if len(args.dirs) != 2:
        raise ValueError("--reward-models compares two run folders")
    rows = []
    for d in args.dirs:
        path = Path(d) / "reward" / SAMPLES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the reward stage's validity report writes it")
        rows.append([json.loads(x) for x in path.read_text().splitlines() if x.strip()])
    result = compare_within_question(*rows)

    def text(r):
        if r["diff"] is None:
            return (f"no question with the same samples and both right and wrong ones "
                    f"({r['n_questions_with_other_samples']} sampled differently)")
        ci = f", 95% CI {r['ci95'][0]:+.3f} to {r['ci95'][1]:+.3f}" if r["ci95"] else ""
        return (f"within-question AUROC on {r['n_questions']} questions with the same samples: "
                f"{r['a']:.3f} ({args.dirs[0]}) -> {r['b']:.3f} ({args.dirs[1]}), difference {r['diff']:+.3f}{ci}"
                + (f"; {r['n_questions_with_other_samples']} questions sampled differently, left out"
                   if r["n_questions_with_other_samples"] else ""))

    _print(result, args.json, text)


def _add_generate(sub):
    from .rationales import GenerateConfig

    _add_data_stage(sub, "generate", "sample, check and store rationales for the training questions (stage 1)",
                    GenerateConfig, "train", _run_generate, out_field="run_dir")


# --- training stages ----------------------------------------------------------------------------------------
def _add_train_stage(sub, name: str, help_text: str, module: str, cls_name: str, func_name: str):
    import importlib

    cls = getattr(importlib.import_module(f"selfmotivated.{module}"), cls_name)
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", help="YAML file with the settings (flags override it)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config_args(p, cls)
    p.set_defaults(func=_run_train_stage, config_cls=cls, stage_module=module, stage_func=func_name)


def _run_train_stage(args):
    import importlib

    config = config_from_args(args.config_cls, args, _yaml_section(args), source=args.config or "flags")
    result = getattr(importlib.import_module(f"selfmotivated.{args.stage_module}"), args.stage_func)(config)
    _print(result, True)


def _add_training(sub):
    _add_train_stage(sub, "sft", "fine-tune the model on its top-tier rationales (stage 2)", "sft", "SFTConfig",
                     "run_sft")
    _add_train_stage(sub, "reward", "train the reward model on the rank of the rationales (stage 3)", "reward",
                     "RewardConfig", "run_reward")
    from .ppo.config import PPOConfig
    from .reward import RerankConfig

    _add_data_stage(sub, "ppo", "PPO of the SFT model against the reward model (stage 4)", PPOConfig, "train",
                    _run_plain_data_stage("selfmotivated.ppo.trainer", "run_ppo"))
    _add_data_stage(sub, "rerank", "best-of-N: sample N answers, keep the reward model's favourite", RerankConfig,
                    "test", _run_plain_data_stage("selfmotivated.reward", "run_rerank"))


def _run_plain_data_stage(module: str, func: str):
    def run(args):
        import importlib

        config = _data_stage_config(args)
        _print(getattr(importlib.import_module(module), func)(config), True)

    return run


# --- the whole method ----------------------------------------------------------------------------------------
def _add_run(sub):
    from .pipeline import STAGES

    p = sub.add_parser("run", help="the whole method from one YAML config, resumable (see configs/)")
    p.add_argument("config", help="pipeline YAML file, e.g. configs/demo.yaml")
    p.add_argument("--out", required=False, help="run folder (default runs/<config name>)")
    p.add_argument("--model", help="base model; tiny-random also shrinks every stage to a smoke run")
    p.add_argument("--data-dir", help="folder of the shared datasets (or SML_DATA_DIR)")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="rerun from this stage on")
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument("--rounds", type=int, help="rounds of the method (overrides the config's `rounds`): round r "
                                             "regenerates rationales with round r-1's SML model")
    p.add_argument("--plan", action="store_true", help="print what would run, resume, rerun or be skipped, "
                                                       "with each stage's estimated tokens and minutes on this "
                                                       "machine (its rates measured once, ~30 s, and cached), "
                                                       "and change nothing")
    p.add_argument("--reprobe", action="store_true", help="with --plan: measure this machine's rates again")
    p.add_argument("--reuse", metavar="RUN", help="start a new --out folder from finished run RUN: the stages "
                                                   "this config leaves unchanged are brought over (weights "
                                                   "hard-linked), so an ablation redoes only what it changes")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args):
    from pathlib import Path

    from .pipeline import load_pipeline_config, run_pipeline, smoke_config

    config = load_pipeline_config(args.config, {"data_dir": args.data_dir, "rounds": args.rounds})
    if args.model == "tiny-random":
        config = smoke_config(config)
    elif args.model:
        config.model = args.model
    out = args.out or str(Path("runs") / Path(args.config).stem)
    if args.reuse:
        if args.plan:
            raise ValueError("--reuse changes the --out folder; run it without --plan, then plan")
        from .pipeline import reuse_run

        taken = reuse_run(config, out, args.reuse)
        print(f"reused from {args.reuse}: {'; '.join(taken) if taken else 'nothing (every stage changed)'}")
    if args.plan:
        from .pipeline import plan_pipeline

        from .estimate import plan_with_estimate

        rows, estimate, note = plan_with_estimate(config, plan_pipeline(config, out, from_stage=args.from_stage,
                                                                        until=args.until), args.until, args.reprobe)
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        for row in rows:
            took = f" (took {row['seconds_before'] / 60:.1f} min)" if row["seconds_before"] is not None else ""
            where = f"round {row['round']} " if config.rounds > 1 else ""
            guess = f"{row['estimated_minutes']:.1f} min" if row.get("estimated_minutes") is not None else ""
            print(f"{where}{row['stage']:<11} {row['action'] + took:<44} {guess}")
        print(note)
        print(f"run folder: {out}")
        return
    summary = run_pipeline(config, out, from_stage=args.from_stage, until=args.until)
    models = dict(summary["models"])  # round 1; later rounds' models as <model>_round<r>
    for later in (summary.get("rounds") or [])[1:]:
        models.update({f"{key}_round{later['round']}": v for key, v in later["models"].items()})
    if args.json:
        print(json.dumps(models, indent=2))
        return
    for key, per_dataset in models.items():
        for ds, m in per_dataset.items():
            print(f"{key:<15} {ds:<28} accuracy {m['accuracy']:.3f} (n={m['n']}, "
                  f"95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
    print(f"run folder: {out}")


def _add_report(sub):
    from .report import ReportConfig

    p = sub.add_parser("report", help="report.md/report.html with tables and plots of one run, or compare runs")
    p.add_argument("runs", nargs="+", help="run folder(s) of `sml run`")
    add_config_args(p, ReportConfig)
    p.set_defaults(func=_run_report)


def _run_report(args):
    from .report import ReportConfig, run_report

    _print(run_report(config_from_args(ReportConfig, args, source="flags")), True)


# --- rationales -------------------------------------------------------------------------------------------
def _add_rationales(sub):
    from .rationales import EXPORT_FORMATS, RankConfig

    p = sub.add_parser("rationales", help="statistics, inspection and export of generated rationales")
    rsub = p.add_subparsers(dest="rationales_command", required=True)
    stats = rsub.add_parser("stats", help="counts per tier, pairs, duplicates, leaks")
    show = rsub.add_parser("show", help="every rationale of one question with its checks and tier")
    show.add_argument("--question", required=True, help="question id, e.g. coin_flip-7")
    exp = rsub.add_parser("export", help="write the SFT set and pair set as JSONL or a Hugging Face dataset folder")
    exp.add_argument("--out", required=True, help="folder to write")
    exp.add_argument("--format", default="jsonl", choices=EXPORT_FORMATS)
    for cmd, func in ((stats, _run_rationales_stats), (show, _run_rationales_show), (exp, _run_rationales_export)):
        cmd.add_argument("run", help="run folder of `sml generate`")
        cmd.add_argument("--json", action="store_true", help="print one JSON object")
        add_config_args(cmd.add_argument_group("ranking"), RankConfig)
        cmd.set_defaults(func=func)


def _rank_config(args):
    from .rationales import RankConfig

    return config_from_args(RankConfig, args, source="flags")


def _run_rationales_stats(args):
    from .rationales import format_stats, rationale_stats

    _print(rationale_stats(args.run, _rank_config(args)), args.json, format_stats)


def _run_rationales_show(args):
    from .rationales import show_question

    print(show_question(args.run, args.question, _rank_config(args)))


def _run_rationales_export(args):
    from .rationales import export

    _print(export(args.run, args.out, fmt=args.format, rank_config=_rank_config(args)), True)


# --- score ------------------------------------------------------------------------------------------------
def _add_score(sub):
    from .answers import ScoreConfig

    p = sub.add_parser("score", help="re-score saved model outputs (JSONL with output and gold)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_config_args(p, ScoreConfig)
    p.set_defaults(func=_run_score)


def _run_score(args):
    from .answers import ScoreConfig, score_file

    config = config_from_args(ScoreConfig, args, source="flags")
    summary = score_file(config)
    _print(summary, args.json, lambda s: (
        f"accuracy {s['accuracy']:.3f} ({s['n_correct']}/{s['n']}), no answer {s['n_no_answer']}"))


# --- data -------------------------------------------------------------------------------------------------
def _add_data(sub):
    p = sub.add_parser("data", help="list and inspect datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    lp = dsub.add_parser("list", help="the datasets we know")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_run_data_list)
    sp = dsub.add_parser("show", help="counts per split, answer type and a few examples of one dataset")
    sp.add_argument("name", help="a dataset key (see `sml data list`) or a path to a JSONL/CSV/HF dataset")
    sp.add_argument("--data-dir", help="folder of the shared datasets (or env SML_DATA_DIR)")
    sp.add_argument("--task-options", "--task-option", nargs="+", action=KeyValues, default={}, metavar="KEY=VALUE",
                    help="a generated task's own settings (rg:chain_sum: min_terms=2 ...), repeatable")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_run_data_show)
    from .data.download import DownloadConfig

    dp = dsub.add_parser("download", help="fetch the 12 built-in datasets, splits and few-shot prompts from their "
                                          "sources (checked by sha256, resumable)")
    dp.add_argument("names", nargs="*", default=["all"], help="dataset keys, or all (default)")
    dp.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config_args(dp, DownloadConfig)
    dp.set_defaults(func=_run_data_download)


def _run_data_list(args):
    from .data import list_datasets

    rows = list_datasets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  {r['answer_type']:<7} {r['source']:<9} {r['description']}")


def _run_data_show(args):
    from .data import describe_dataset, format_description

    desc = describe_dataset(args.name, data_dir=args.data_dir, task_options=args.task_options)
    _print(desc, args.json, format_description)


def _run_data_download(args):
    from .data.download import DownloadConfig, download, format_download

    config = config_from_args(DownloadConfig, args, {"names": args.names}, source="flags")
    _print(download(config, echo=None if args.json else print), args.json, format_download)


# --- bench ------------------------------------------------------------------------------------------------
def _add_bench(sub):
    p = sub.add_parser("bench", help="speed benchmarks against a baseline run side by side")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    try:
        from .generation.bench import BenchGenerateConfig
    except ImportError:  # the engine's benchmark module is optional while it is being built
        return
    gp = bsub.add_parser("generate", help="our generation engine against Hugging Face generate")
    gp.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_args(gp, BenchGenerateConfig)
    gp.set_defaults(func=_run_bench_generate)
    for name, help_text, module, cls_name, func_name, fmt_name in (
        ("ppo", "time and peak memory of one PPO iteration against one SFT LoRA step", "selfmotivated.ppo.bench",
         "BenchPPOConfig", "run_bench_ppo", "format_bench_ppo"),
        ("train", "SFT and reward training throughput against a matmul peak", "selfmotivated.bench_train",
         "BenchTrainConfig", "run_bench_train", "format_bench_train"),
    ):
        import importlib

        try:
            module_obj = importlib.import_module(module)
        except ImportError:
            continue
        bp = bsub.add_parser(name, help=help_text)
        bp.add_argument("--json", action="store_true", help="print one JSON object")
        add_config_args(bp, getattr(module_obj, cls_name))
        bp.set_defaults(func=_run_bench, bench_module=module_obj, bench_cls=cls_name, bench_func=func_name,
                        bench_fmt=fmt_name)


def _run_bench_generate(args):
    from .generation import bench

    config = config_from_args(bench.BenchGenerateConfig, args, source="flags")
    result = bench.run_bench_generate(config)
    _print(result, args.json, getattr(bench, "format_bench_result", None))


def _run_bench(args):
    config = config_from_args(getattr(args.bench_module, args.bench_cls), args, source="flags")
    result = getattr(args.bench_module, args.bench_func)(config)
    _print(result, args.json, getattr(args.bench_module, args.bench_fmt, None))


# --- models -----------------------------------------------------------------------------------------------
def _add_model(sub):
    p = sub.add_parser("model", help="prepare and inspect models")
    msub = p.add_subparsers(dest="model_command", required=True)
    pp = msub.add_parser("prepare", help="fetch/convert a named model into the cache and print its folder; "
                                         "with no name, list the names")
    pp.add_argument("name", nargs="?", help="a known name (see `sml model list`)")
    pp.set_defaults(func=_run_model_prepare)
    lp = msub.add_parser("list", help="the model names we know, what each needs, and whether it is prepared")
    lp.add_argument("--json", action="store_true", help="print one JSON list")
    lp.set_defaults(func=_run_model_list, json=False)


def _run_model_prepare(args):
    from .models import prepare_model

    if not args.name:
        return _run_model_list(args)
    print(prepare_model(args.name))


def _run_model_list(args):
    from .models import format_model_list, list_models

    _print(list_models(), getattr(args, "json", False), format_model_list)


# --- review -----------------------------------------------------------------------------------------------
def _add_review(sub):
    from .review import ReviewConfig

    p = sub.add_parser("review", help="a local page to label a run's rationales; agreement of tiers and reward "
                                      "model with the labels")
    p.add_argument("run", help="run folder of `sml run` or `sml generate`")
    p.add_argument("--json", action="store_true", help="print the agreement figures as JSON, no server")
    add_config_args(p, ReviewConfig)
    p.set_defaults(func=_run_review)


def _run_review(args):
    from .review import ReviewConfig, run_review

    config = config_from_args(ReviewConfig, args, {"run": args.run, "figures_only": args.json}, source="flags")
    result = run_review(config)
    if config.export or config.figures_only:
        _print(result if config.export and not args.json else result["figures"], True)


def _add_export(sub):
    p = sub.add_parser("export", help="copy a run folder's results without its weights (to commit or share a run)")
    p.add_argument("run", metavar="RUN", help="a `sml run` folder")
    p.add_argument("dest", metavar="DEST", help="destination folder (rerun as the run goes on: changed files only)")
    p.add_argument("--max-file-mb", type=float, default=20.0, help="leave out (and name) larger files")
    p.set_defaults(func=_run_export)


def _run_export(args):
    from .pipeline import export_run

    counts = export_run(args.run, args.dest, args.max_file_mb)
    print(f"{counts['copied']} files written to {args.dest}, {counts['unchanged']} unchanged"
          + (f"; left out as larger than {args.max_file_mb:g} MB: {', '.join(counts['skipped_large'])}"
             if counts["skipped_large"] else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sml", description="Self-motivated Learning for language model reasoning")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_eval, _add_score, _add_data, _add_generate, _add_rationales, _add_training,
                _add_report, _add_bench, _add_model, _add_review, _add_calibrate, _add_compare, _add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import user_message

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted after the command too: `sml eval ... --debug`
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except Exception as err:
        # Expected failures (errors.user_message) are one line and exit 2; a bug keeps its traceback.
        message = user_message(err)
        if message is None or debug or args.verbose:
            raise
        print(f"sml {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
