"""`sml run CONFIG`: the whole method in one resumable command.

    baseline eval -> generate rationales -> rank -> SFT -> reward model -> PPO -> eval of every stage's model
    (-> best-of-N with the reward model) -> summary.json (+ report)

Every stage writes into one run folder with a fixed layout (RUN/rationales.sqlite, RUN/ranked, RUN/sft, RUN/reward,
RUN/ppo, RUN/eval/<model>/<dataset>) and is recorded in RUN/stages.json with a fingerprint of its settings
and of the stages it reads. A rerun skips stages whose fingerprint is unchanged, reruns a stage whose settings
changed and every stage after it (the stale output is moved aside to RUN/stale/, never deleted), and resumes an
interrupted stage (each stage resumes from its own checkpoints). Fingerprints name folders relative to the
run folder, so a run folder copied to another machine resumes there.

With `rounds: N` the method repeats: round r (RUN/round-<r>/, same layout, no baseline) generates rationales
with round r-1's SML model and trains from it. Each round's fingerprints chain to the round before, so a
change in round 1 reruns every later round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import build_config, load_yaml
from .data import TRANSFER_SUFFIX, DataConfig, dataset_folder
from .ppo.gate import RewardModelInvalid
from .training import ADDED_LATER

log = logging.getLogger(__name__)

# The controls (below) need only the SFT model and run before the reward model: that the loop can learn
# against the answer checker is known before the learned reward is judged.
STAGES = ("baseline", "generate", "rank", "sft", "ppo_checker", "sft_round2", "reward", "ppo", "evaluate",
          "best_of_n", "transfer")
# Stages that only measure a model: no later stage reads their output, so their settings (the test subset,
# say) stay out of the fingerprint chain, and evaluating on more questions retrains nothing.
MEASURE_STAGES = ("baseline", "evaluate", "best_of_n", "transfer")
# The transfer test set of a dataset is evaluated into eval/<model>/<dataset><TRANSFER_SUFFIX>/, beside the
# dataset's own, so the report and `sml compare` treat it as one more test dataset (`dataset_folder` names the
# folder: a file path or hub id becomes one safe path component).
# Control stages train a model beside SML from the same SFT start, to say what helped: their fingerprints
# chain from the SFT stage only, and no later training stage reads them.
CONTROL_STAGES = ("ppo_checker", "sft_round2")
CONTROLS = {"ppo_checker": "PPO against our answer checker on the training questions' gold answers (the "
                           "verifiable-reward control; same SFT start and rollout budget as SML)",
            "sft_round2": "expert iteration: the SFT model fine-tuned again on its own correct samples, as many "
                          "sampled responses as PPO's rollouts"}
SECTIONS = ("data", "eval", "generate", "rank", "sft", "reward", "ppo", "rerank")


@dataclass
class PipelineConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "base model: a known name, folder or hub id"})
    dataset: str = field(default="synthetic_coin_flip", metadata={
        "help": "dataset whose training split the method learns from (a built-in key, synthetic_*, or a file)"})
    eval_datasets: tuple[str, ...] = field(default=(), metadata={
        "help": "datasets evaluated before and after (default: the training dataset)"})
    data_dir: str | None = field(default=None, metadata={"help": "folder of the shared datasets (or SML_DATA_DIR)"})
    train_limit: int | None = field(default=None, metadata={
        "help": "use the first N training questions (rationales and PPO); empty: all"})
    test_limit: int | None = field(default=None, metadata={"help": "evaluate the first N test questions; empty: all"})
    few_shot_baseline: bool = field(default=True, metadata={"help": "also evaluate the base model few-shot"})
    best_of_n: int = field(default=4, metadata={"help": "best-of-N with the reward model after PPO (0: skip)"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    templates: str | None = field(default=None, metadata={
        "help": "JSON file overriding our prompt templates, for every stage that builds prompts"})
    controls: tuple[str, ...] = field(default=(), metadata={
        "help": "control models trained and evaluated beside SML: " + "; ".join(f"{k}: {v}" for k, v in CONTROLS.items())})
    transfer: dict = field(default_factory=dict, metadata={
        "help": "a harder test set every model is also evaluated on, as data keys that differ from `data:` "
                "(task_options merge key by key), e.g. {task_options: {max_terms: 3}}: does what a model learnt "
                "carry one difficulty level up? Empty: no transfer evaluation"})
    rounds: int = field(default=1, metadata={
        "help": "rounds of the method: round r > 1 regenerates rationales with round r-1's SML model, then "
                "runs rank, SFT (from that model), reward model, PPO and evaluation again in RUN/round-<r>"})
    report: bool = field(default=True, metadata={"help": "write report.md/report.html at the end"})
    # Per-stage settings: keys of each stage's config dataclass (checked when the config is loaded).
    data: dict = field(default_factory=dict, metadata={"help": "DataConfig keys for the dataset (fields, sizes)"})
    eval: dict = field(default_factory=dict, metadata={"help": "EvalConfig keys (max_new_tokens, batch_size...)"})
    generate: dict = field(default_factory=dict, metadata={"help": "GenerateConfig keys (n_free, n_gold...)"})
    rank: dict = field(default_factory=dict, metadata={"help": "RankConfig keys (tier_rules, pair cap...)"})
    sft: dict = field(default_factory=dict, metadata={"help": "SFTConfig keys"})
    reward: dict = field(default_factory=dict, metadata={"help": "RewardConfig keys"})
    ppo: dict = field(default_factory=dict, metadata={"help": "PPOConfig keys"})
    rerank: dict = field(default_factory=dict, metadata={"help": "RerankConfig keys (best-of-N)"})

    def __post_init__(self):
        self.eval_datasets = tuple(self.eval_datasets) or (self.dataset,)
        self.controls = tuple(self.controls)
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"controls: unknown {unknown}; known: {', '.join(CONTROLS)}")
        if self.best_of_n < 0:
            raise ValueError(f"best_of_n must be >= 0, got {self.best_of_n}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        # Build every stage config once now, so a bad key fails before hours of work, naming the section.
        if self.templates:
            from .prompts import load_templates

            try:  # a missing or bad file fails now, naming the key, not at the first prompt
                load_templates(self.templates)
            except (OSError, ValueError) as err:
                raise type(err)(f"templates: {err}") from None
        for section in (*SECTIONS, "transfer"):
            if not isinstance(getattr(self, section), dict):
                raise ValueError(f"section {section!r} must be a mapping of settings")
        for stage_name in STAGES:
            for _ in stage_configs(self, Path("RUN"), stage_name):
                pass


def load_pipeline_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read a YAML pipeline config; `overrides` (e.g. from flags) win over the file."""
    values = {**load_yaml(path), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return build_config(PipelineConfig, values, str(path))


def _section(config: PipelineConfig, name: str, cls, base: dict) -> object:
    """Stage config = our wiring (`base`) updated with the user's section; a user key we set ourselves wins."""
    values = {**base, **getattr(config, name)}
    return build_config(cls, values, f"{name}")


def _data(config: PipelineConfig, dataset: str, split: str, limit: int | None) -> DataConfig:
    return build_config(DataConfig, {**config.data, "dataset": dataset, "data_dir": config.data_dir,
                                     "split": split, "limit": limit}, "data")


def transfer_data(config: PipelineConfig, dataset: str) -> DataConfig:
    """The transfer test set of `dataset`: its test split with `config.transfer` over the data settings."""
    from .data import check_task_options

    fixed = sorted(set(config.transfer) & {"dataset", "split", "limit", "data_dir"})
    if fixed:
        raise ValueError(f"transfer: {', '.join(fixed)} cannot change (the transfer set is the same dataset's test "
                         "split, one level up): set task options or sizes, e.g. transfer: {task_options: {...}}")
    data = {**config.data, **config.transfer}
    if "task_options" in config.transfer:
        from .data import parse_task_options

        data["task_options"] = {**parse_task_options(config.data.get("task_options") or {}),
                                **parse_task_options(config.transfer["task_options"] or {})}
    built = build_config(DataConfig, {**data, "dataset": dataset, "data_dir": config.data_dir, "split": "test",
                                      "limit": config.test_limit}, "transfer")
    try:
        check_task_options(built)
    except ValueError as err:
        raise ValueError(f"transfer: {err}") from None
    return built


def trained_models(config: PipelineConfig, run: Path) -> list[tuple[str, Path]]:
    """(row key, model folder) of every model a round trains, in the accuracy table's order: what the evaluate
    stage measures (and the transfer stage, with the base model)."""
    models = [("sft", run / "sft" / "model"), ("sml", policy_dir(run))]
    if "ppo_checker" in config.controls:
        models.append(("ppo_checker", run / "ppo_checker" / "policy"))
    if "sft_round2" in config.controls:
        models.append(("sft_round2", run / "sft_round2" / "model"))
    return models


def stage_configs(config: PipelineConfig, run: Path, stage: str, round_: int = 1):
    """(label, config object) pairs a stage runs, with every path inside `run`. From round 2 on the base
    model is round r-1's SML model and the baseline is not evaluated again."""
    from .evaluate import EvalConfig

    if round_ > 1 and stage == "baseline":
        return

    def eval_config(model: str, key: str, dataset: str, prompt: str = "zero_shot", transfer: bool = False):
        folder = dataset_folder(dataset + TRANSFER_SUFFIX if transfer else dataset)
        base = {"model": model, "out": str(run / "eval" / key / folder), "prompt": prompt, "progress": True,
                "templates": config.templates}
        cfg = _section(config, "eval", EvalConfig, base)
        cfg.data = transfer_data(config, dataset) if transfer else _data(config, dataset, "test", config.test_limit)
        return cfg

    if stage == "baseline":
        for ds in config.eval_datasets:
            yield f"base/{ds}", eval_config(config.model, "base", ds)
            if config.few_shot_baseline:
                yield f"base_few_shot/{ds}", eval_config(config.model, "base_few_shot", ds, "few_shot")
    elif stage == "generate":
        from .rationales import GenerateConfig

        cfg = _section(config, "generate", GenerateConfig, {"model": config.model, "run_dir": str(run),
                                                            "seed": config.seed, "templates": config.templates})
        cfg.data = _data(config, config.dataset, "train", config.train_limit)
        yield "generate", cfg
    elif stage == "rank":
        from .rationales import RankConfig

        yield "rank", _section(config, "rank", RankConfig, {})
    elif stage == "sft":
        from .sft import SFTConfig

        yield "sft", _section(config, "sft", SFTConfig, {"model": config.model, "run_dir": str(run / "ranked"),
                                                         "out": str(run / "sft"), "seed": config.seed})
    elif stage == "reward":
        from .reward import RewardConfig

        ppo = ppo_config(config, run)
        base = {"model": str(run / "sft" / "model"), "run_dir": str(run / "ranked"), "out": str(run / "reward"),
                "seed": config.seed}
        if config.train_limit is not None:
            # The validity report samples the policy PPO starts from, as PPO will, on training questions that
            # neither the rationales nor PPO use (those after train_limit; PPO's held-out evaluation reads
            # the same ones, never the test split).
            base.update({"validity_dataset": config.dataset, "validity_offset": config.train_limit,
                         "validity_temperature": ppo.temperature, "validity_max_new_tokens": ppo.max_new_tokens,
                         "validity_templates": config.templates, "data_dir": config.data_dir,
                         "validity_data": {k: v for k, v in config.data.items()
                                           if k not in ("dataset", "split", "limit", "data_dir")}})
        cfg = _section(config, "reward", RewardConfig, base)
        if cfg.policy_pairs == "sft_round2":  # the run's own expert-iteration samples
            if "sft_round2" not in config.controls:
                raise ValueError("reward.policy_pairs: sft_round2 needs the sft_round2 control (controls: "
                                 "[sft_round2]): its samples of the SFT model are the policy pairs")
            cfg.policy_pairs = str(run / "sft_round2")
        yield "reward", cfg
    elif stage == "ppo":
        yield "ppo", ppo_config(config, run)
    elif stage == "ppo_checker":
        if "ppo_checker" in config.controls:
            cfg = ppo_config(config, run)
            cfg.reward, cfg.out, cfg.reward_model = "checker", str(run / "ppo_checker"), None
            # No reward model, so no validity gate: the control keeps the default threshold whatever `ppo:`
            # sets for SML's gate (which is then not the control's setting, and reruns nothing of it).
            cfg.min_reward_auroc = type(cfg).__dataclass_fields__["min_reward_auroc"].default
            yield "ppo_checker", cfg
    elif stage == "sft_round2":
        if "sft_round2" in config.controls:
            from .expert_iteration import ExpertIterationConfig

            ppo = ppo_config(config, run)
            yield "sft_round2", ExpertIterationConfig(
                sft_model=str(run / "sft" / "model"), out=str(run / "sft_round2"),
                samples=ppo.iterations * ppo.prompts_per_iteration * ppo.samples_per_prompt,
                samples_per_prompt=ppo.samples_per_prompt, temperature=ppo.temperature,
                max_new_tokens=ppo.max_new_tokens, prompt=ppo.prompt, chat=ppo.chat, templates=config.templates,
                seed=config.seed, generation_batch_size=ppo.generation_batch_size, sft=dict(config.sft),
                data=ppo.data)
    elif stage == "evaluate":
        for ds in config.eval_datasets:
            for key, model in trained_models(config, run):
                yield f"{key}/{ds}", eval_config(str(model), key, ds)
    elif stage == "best_of_n":
        if config.best_of_n:
            from .reward import RerankConfig

            for ds in config.eval_datasets:
                base = {"reward_model": str(run / "reward" / "model"), "policy": str(policy_dir(run)),
                        "out": str(run / "eval" / "sml_best_of_n" / dataset_folder(ds)), "n": config.best_of_n,
                        "seed": config.seed, "templates": config.templates}
                cfg = _section(config, "rerank", RerankConfig, base)
                cfg.data = _data(config, ds, "test", config.test_limit)
                yield f"sml_best_of_n/{ds}", cfg
    elif stage == "transfer":
        if config.transfer:
            for ds in config.eval_datasets:
                base = [("base", config.model)] if round_ == 1 else []  # later rounds start from SML
                for key, model in base + trained_models(config, run):
                    yield f"{key}/{ds}{TRANSFER_SUFFIX}", eval_config(str(model), key, ds, transfer=True)
    else:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def ppo_config(config: PipelineConfig, run: Path):
    """SML's PPO settings: our wiring, then the user's `ppo:` section. PPO samples as many new tokens as the
    final evaluation unless told otherwise, so checkpoint choice and the guard judge what the test measures."""
    from .evaluate import EvalConfig
    from .ppo.config import PPOConfig

    eval_tokens = config.eval.get("max_new_tokens", EvalConfig.__dataclass_fields__["max_new_tokens"].default)
    cfg = _section(config, "ppo", PPOConfig, {"run_dir": str(run), "sft_model": str(run / "sft" / "model"),
                                              "reward_model": str(run / "reward" / "model"),
                                              "out": str(run / "ppo"), "seed": config.seed,
                                              "templates": config.templates, "max_new_tokens": eval_tokens})
    cfg.data = _data(config, config.dataset, "train", config.train_limit)
    return cfg


def policy_dir(run: Path) -> Path:
    """The model PPO saves (a merged `save_pretrained` folder)."""
    return run / "ppo" / "policy"


# Settings that change how fast a stage runs, not what it produces (beyond float rounding; tested): changing one
# reruns nothing.
NOT_FINGERPRINTED = ("progress", "reuse_sampler_logprobs", "share_prompts", "share_prompt", "pack_weights")
# Settings added after runs were made (training.ADDED_LATER), at the value that keeps the behaviour those runs
# had: left out of the fingerprint at that value, so a finished run stays done, and counted at any other value.
COUNTED_UNLESS = ADDED_LATER


def stage_settings(configs: list[tuple[str, object]], run: Path) -> list:
    """A stage's settings as plain JSON: per config its label and fields, with paths inside `run` (the top run
    folder, also for later rounds) made relative and prompt templates as a digest of their content."""
    from .prompts import templates_digest

    def relative(value):
        if isinstance(value, str) and value.startswith(str(run)):
            return "RUN" + value[len(str(run)):]
        if isinstance(value, dict):
            # Prompt templates count by content: editing the file (or a new version of ours) reruns.
            return {k: templates_digest(v) if k == "templates" or k.endswith("_templates") else relative(v)
                    for k, v in value.items()
                    if k not in NOT_FINGERPRINTED and not (k in COUNTED_UNLESS and v == COUNTED_UNLESS[k])}
        if isinstance(value, (list, tuple)):
            return [relative(v) for v in value]
        return value

    settings = [[label, relative(dataclasses.asdict(cfg))] for label, cfg in configs]
    return json.loads(json.dumps(settings, default=str))


def _fingerprint(stage: str, settings: list, upstream: str) -> str:
    """Hash of a stage's settings chained to the stages before it."""
    payload = {"stage": stage, "upstream": upstream, "configs": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(before: list, after: list) -> list[str]:
    """Dotted names of the settings that differ between two `stage_settings` results."""
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    one = {k: v for label, cfg in before for k, v in flat(cfg, f"{label}.").items()}
    two = {k: v for label, cfg in after for k, v in flat(cfg, f"{label}.").items()}
    return sorted(k for k in one.keys() | two.keys() if one.get(k) != two.get(k))


def _stage_outputs(run: Path, stage: str, configs) -> list[Path]:
    if stage == "generate":
        return [run / "rationales.sqlite", run / "rationales.sqlite-wal", run / "rationales.sqlite-shm"]
    if stage in ("sft", "reward", "ppo", *CONTROL_STAGES):
        return [run / stage]
    if stage == "rank":
        return [run / "ranked"]
    return [Path(cfg.out) for _, cfg in configs]


def _move_aside(run: Path, paths: list[Path], stage: str) -> None:
    """Stale output goes to RUN/stale/<stage>-<time>/, so nothing produced is ever lost."""
    existing = [p for p in paths if p.exists()]
    if not existing:
        return
    dest = run / "stale" / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in existing:
        shutil.move(str(p), str(dest / p.relative_to(run).as_posix().replace("/", "__")))
    log.info("stage %s: settings changed; previous output moved to %s", stage, dest)


def _read_json(path: Path) -> dict:
    """A JSON object of the run folder (stages.json: {stage: {"status", "fingerprint", ...}}); {} when absent."""
    from .errors import RunFolderError

    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        record = err
    stages = path.name == "stages.json"
    if not isinstance(record, dict) or (stages and not all(isinstance(v, dict) for v in record.values())):
        # Another version's layout, or an edited or cut file: stop before a stage reruns over its outputs.
        what = "a stage record ({stage: {status, fingerprint, ...}})" if stages else "a JSON object"
        raise RunFolderError(
            f"{path} is not {what} this version of sml reads; the run folder was probably written by another "
            f"version. Use another --out folder; no stage output in {path.parent} was touched")
    return record


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _run_one(stage: str, label: str, cfg, run: Path) -> dict:
    """Call the stage function of one config."""
    if stage in ("baseline", "evaluate", "transfer"):
        from .evaluate import run_eval

        return run_eval(cfg)
    if stage == "generate":
        from .rationales import run_generate

        return run_generate(cfg)
    if stage == "rank":
        from .rationales import export

        return export(run, run / "ranked", fmt="jsonl", rank_config=cfg)
    if stage == "sft":
        from .sft import run_sft

        return run_sft(cfg)
    if stage == "reward":
        from .reward import run_reward

        return run_reward(cfg)
    if stage in ("ppo", "ppo_checker"):
        from .ppo.trainer import run_ppo

        return run_ppo(cfg)
    if stage == "sft_round2":
        from .expert_iteration import run_expert_iteration

        return run_expert_iteration(cfg)
    if stage == "best_of_n":
        from .reward import run_rerank

        return run_rerank(cfg)
    raise ValueError(f"unknown stage {stage!r}")


def round_dir(run: Path, round_: int) -> Path:
    """Where round `round_` lives: the run folder itself for round 1, RUN/round-<r> after."""
    return run if round_ == 1 else run / f"round-{round_}"


def round_config(config: PipelineConfig, run: Path, round_: int) -> PipelineConfig:
    """Round r's settings: round 1's, with round r-1's SML model as the model that generates and is trained."""
    if round_ == 1:
        return config
    return dataclasses.replace(config, model=str(policy_dir(round_dir(run, round_ - 1))), few_shot_baseline=False)


def reuse_run(config: PipelineConfig, out: str | Path, source: str | Path) -> list[str]:
    """Start run folder `out` from finished run `source`: every stage `source` finished with the fingerprint
    `config` gives it is brought over with its record, so `sml run` skips it, and of evaluate and transfer the
    evaluations of models that stay the same. An ablation that changes the reward model redoes the reward
    model, PPO and SML's evaluations, not the rationales, SFT and the controls. Weights and optimizer states
    are hard links where the file system allows (a finished stage never rewrites them), every other file a
    copy, so neither run can change the other's. Round 1 only. Returns the stages brought over."""
    src, run = Path(source).resolve(), Path(out).resolve()
    before = _read_json(src / "stages.json")
    if not before:
        raise ValueError(f"--reuse {source}: no stages.json there (not a `sml run` folder)")
    if (run / "stages.json").exists():
        raise ValueError(f"--reuse: {out} already holds a run (stages.json); give a new --out folder")
    if src == run:
        raise ValueError("--reuse names the run folder itself")
    planned = round_plan(config, run, 1, "")
    record, taken = {}, []
    for stage in STAGES:
        configs, fingerprint, settings = planned[stage]
        old = before.get(stage, {})
        if old.get("status") != "done" or settings is None:
            continue
        if old.get("fingerprint") == fingerprint:
            labels = None  # the whole stage
        elif stage in REUSABLE_STAGES:
            labels = reusable_labels(old, settings, model_producers(configs, planned, ""))
            if not labels:
                continue
        else:
            continue
        for path in _stage_outputs(run, stage, [(label, cfg) for label, cfg in configs
                                                if labels is None or label in labels]):
            origin = src / path.relative_to(run)
            if origin.exists():
                _copy_tree(origin, path)
        for label, cfg in configs:
            if labels is not None and label in labels:
                _relocate_evaluation(Path(cfg.out), cfg.model)
        result = src / f"{stage}_result.json"
        if labels is None and result.is_file():
            shutil.copy2(result, run / result.name)
        record[stage] = old
        taken.append(stage if labels is None else f"{stage} ({', '.join(sorted(labels))})")
    if taken:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(run / "stages.json", record)
        log.info("reused from %s: %s", src, "; ".join(taken))
    return taken


def _copy_tree(origin: Path, dest: Path) -> None:
    """Copy a file or folder; weights and optimizer states (written once, never rewritten in place) become hard
    links when the file system allows."""
    def copy(a, b):
        if str(a).endswith((".safetensors", ".bin")):
            try:
                os.link(a, b)
                return b
            except OSError:
                pass
        return shutil.copy2(a, b)

    dest.parent.mkdir(parents=True, exist_ok=True)
    if origin.is_dir():
        shutil.copytree(origin, dest, copy_function=copy)
    else:
        copy(origin, dest)


# What `export_run` leaves behind: weights and what only loading them needs, resumable training state, and the
# outputs of superseded runs. Everything else of a run folder is small text, tables and figures.
EXPORT_SKIPPED_DIRS = ("model", "policy", "checkpoints", "stale", "adapter", "value_head", "tensorboard")
EXPORT_SUFFIXES = (".json", ".jsonl", ".gz", ".md", ".html", ".png", ".svg", ".yaml", ".csv", ".txt")
EXPORT_SKIPPED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "adapter_config.json", "generation_config.json", "chat_template.jinja")


def export_run(run: str | Path, dest: str | Path, max_file_mb: float = 20.0) -> dict:
    """Copy a run folder's results into `dest` without its weights: stages.json, summary.json, the report
    and plots, every evaluation's predictions, the ranked rationales, each stage's config, metrics and
    record; no model, checkpoint, tokenizer, rationale database or stale output. For committing a run, or
    reading it where its weights cannot go. Rerun it as the run goes on: only changed files are written.
    Returns {"copied": n, "unchanged": n, "skipped_large": [paths]}."""
    src, dest = Path(run).resolve(), Path(dest).resolve()
    if not (src / "stages.json").is_file():
        raise ValueError(f"export: {run} is not a `sml run` folder (no stages.json)")
    if dest == src or src in dest.parents:
        raise ValueError(f"export: the destination {dest} lies inside the run folder {src}")
    counts = {"copied": 0, "unchanged": 0, "skipped_large": []}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (not path.is_file() or path.suffix not in EXPORT_SUFFIXES or path.name in EXPORT_SKIPPED_FILES
                or any(part in EXPORT_SKIPPED_DIRS or part.startswith("checkpoint") for part in rel.parts[:-1])):
            continue
        if path.stat().st_size > max_file_mb * 2**20:
            counts["skipped_large"].append(str(rel))
            continue
        target = dest / rel
        if target.is_file() and target.stat().st_size == path.stat().st_size \
                and target.read_bytes() == path.read_bytes():
            counts["unchanged"] += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        counts["copied"] += 1
    return counts


def run_pipeline(config: PipelineConfig, out: str | Path, from_stage: str | None = None,
                 until: str | None = None) -> dict:
    """Run (or resume) every stage of every round into `out`; returns the summary of round 1 (with the
    later rounds' models under "rounds")."""
    for name, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in STAGES:
            raise ValueError(f"{name} {value!r} is not a stage; stages: {', '.join(STAGES)}")
    run = Path(out).resolve()
    run.mkdir(parents=True, exist_ok=True)
    from .estimate import write_estimate

    write_estimate(config, run, until)  # RUN/estimate.json when this machine's rates are cached (`--plan`)
    import yaml

    # A later round needs the whole round before it: with --until only round 1 runs.
    rounds = config.rounds if until is None else 1
    upstream, forced, summaries = "", False, []
    for round_ in range(1, rounds + 1):
        where, settings = round_dir(run, round_), round_config(config, run, round_)
        where.mkdir(parents=True, exist_ok=True)
        text, saved = yaml.safe_dump(dataclasses.asdict(settings), sort_keys=False), where / "config.yaml"
        if not saved.is_file() or saved.read_text() != text:  # kept on resume: its time is when the run began
            saved.write_text(text)
        upstream, forced = _run_round(settings, run, where, round_, upstream, forced, from_stage, until)
        summaries.append(write_summary(settings, where, _read_json(where / "stages.json")))
    summary = summaries[0]
    if rounds > 1:
        summary["rounds"] = [{"round": r, "run": str(round_dir(run, r)), "models": s["models"]}
                             for r, s in enumerate(summaries, start=1)]
        _write_json(run / "summary.json", summary)
    if config.report and until is None:
        from .report import make_report

        for round_ in range(1, rounds + 1):
            make_report([str(round_dir(run, round_))])
        if rounds > 1:  # the rounds side by side
            make_report([str(round_dir(run, r)) for r in range(1, rounds + 1)], out=str(run / "rounds"))
    return summary


def round_plan(config: PipelineConfig, run: Path, round_: int, upstream: str) -> dict[str, tuple[list, str, list]]:
    """stage -> (its (label, config) pairs, its fingerprint, its `stage_settings` or None when it has nothing to
    run) for one round, chained from `upstream` (the fingerprint of the last stage before this round; "" for
    round 1). `config` is the round's own."""
    plan = {}
    controls = []
    for stage in STAGES:
        configs = list(stage_configs(config, round_dir(run, round_), stage, round_))
        settings = stage_settings(configs, run)
        if stage in CONTROL_STAGES:  # from the SFT model only: SML's reward model and PPO do not touch them
            fingerprint = _fingerprint(stage, settings, plan["sft"][1])
            if configs:
                controls.append(fingerprint)
        elif stage in MEASURE_STAGES and controls:  # measures every model, the controls' too
            fingerprint = _fingerprint(stage, settings, upstream + "".join(controls))
        elif stage == "reward" and configs and configs[0][1].policy_pairs and "sft_round2" in plan:
            # trained on expert iteration's samples too: redone when they are
            fingerprint = _fingerprint(stage, settings, upstream + plan["sft_round2"][1])
        else:
            fingerprint = _fingerprint(stage, settings, upstream)
        plan[stage] = (configs, fingerprint, settings if configs else None)
        if stage not in MEASURE_STAGES and stage not in CONTROL_STAGES:
            upstream = fingerprint
    return plan


def round_chain(plan: dict) -> str:
    """The fingerprint the next round chains to: that of the last stage that trains (PPO)."""
    return plan["ppo"][1]


# Stages whose outputs are one evaluation per (model, dataset): on a rerun, those of unchanged models are kept.
REUSABLE_STAGES = ("evaluate", "transfer")
# Which stage's output a model row is (its fingerprint says whether the model changed).
MODEL_STAGE = {"sft": "sft", "sml": "ppo", "ppo_checker": "ppo_checker", "sft_round2": "sft_round2"}


def model_producers(configs, planned: dict, upstream: str) -> dict[str, str]:
    """label -> the fingerprint of the stage that made the label's model (the base model: the round's upstream,
    "" in round 1, where the base model is the config's and its name is in the label's settings)."""
    out = {}
    for label, _ in configs:
        key = label.split("/", 1)[0]
        out[label] = planned[MODEL_STAGE[key]][1] if key in MODEL_STAGE else f"base:{upstream}"
    return out


def reusable_labels(before: dict, settings: list | None, producers: dict[str, str]) -> set[str]:
    """Labels of a finished measuring stage whose evaluation can stay: same settings, same model (by the
    fingerprint recorded when it ran; a record without one keeps nothing)."""
    if before.get("status") != "done" or before.get("invalidated") or not settings \
            or not isinstance(before.get("models"), dict):
        return set()
    old = {label: cfg for label, cfg in before.get("settings") or []}
    return {label for label, cfg in settings
            if label in old and old[label] == cfg and before["models"].get(label) == producers.get(label)}


def _relocate_evaluation(out: Path, model: str) -> None:
    """A kept evaluation of a copied or moved run folder names the model by its old path: the same model (its
    stage fingerprint says so), so it is told the new one, and the evaluation resumes instead of refusing."""
    path = out / "eval_config.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if recorded.get("model") != model:
        recorded["model"] = model
        _write_json(path, recorded)


CHAIN_STAGES = ("generate", "rank", "sft", "reward", "ppo")  # each trains or makes what the next one reads


def reads(later: str, stage: str, policy_pairs: bool = False) -> bool:
    """Whether stage `later` (after `stage` in STAGES) reads what `stage` makes, directly or through another."""
    if stage == "baseline":
        return False
    if later in ("evaluate", "transfer"):
        return True
    if later in CONTROL_STAGES:
        return stage in ("generate", "rank", "sft")
    return stage in CHAIN_STAGES or (stage == "sft_round2" and policy_pairs)


def _invalidate_readers(config: PipelineConfig, run: Path, round_: int, record: dict, planned: dict,
                        stage: str) -> None:
    """`stage` is about to make its output anew under a fingerprint that may be unchanged (--from, a resumed
    interruption): a later stage recorded done on its old output must not pass for done, in this round and,
    when the round's SML model may change, in the later ones."""
    configs = planned["reward"][0]
    policy_pairs = bool(configs and getattr(configs[0][1], "policy_pairs", None))
    for later in STAGES[STAGES.index(stage) + 1:]:
        # Only a record that would still pass for done: one whose fingerprint changed reruns anyway, keeping
        # the evaluations of unchanged models.
        if record.get(later, {}).get("fingerprint") == planned[later][1] and reads(later, stage, policy_pairs):
            record[later]["invalidated"] = True
    if stage in CHAIN_STAGES:
        for r in range(round_ + 1, config.rounds + 1):
            path = round_dir(run, r) / "stages.json"
            later_record = _read_json(path)
            if later_record:
                for info in later_record.values():
                    if info.get("status") != "skipped":
                        info["invalidated"] = True
                _write_json(path, later_record)


def stage_action(before: dict, fingerprint: str, forced: bool, settings: list | None = None) -> str:
    """What `sml run` does with a stage, given its record in stages.json and its settings now (None: the
    stage has nothing to run): "done" (up to date), "skipped", "run", "resume" (interrupted), "rerun (--from)"
    or "rerun (...)" naming the settings that changed. A rerun moves the old outputs to RUN/stale first."""
    if settings is None:
        return "skipped"
    if before.get("invalidated") and not forced:
        return "rerun (an earlier stage was redone)"
    if before.get("status") in ("done", "refused") and before.get("fingerprint") == fingerprint and not forced:
        return "done"
    if forced and before:
        return "rerun (--from)"
    if before.get("fingerprint") not in (None, fingerprint):
        if "settings" not in before:  # recorded by a version that did not keep them
            return "rerun (settings changed)"
        # Named without the config's label: a stage's configs (one per model and dataset) change together.
        changed = list(dict.fromkeys(k.split(".", 1)[-1] for k in changed_settings(before["settings"], settings)))
        if not changed:
            return "rerun (an earlier stage changed)"
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return f"rerun ({shown} changed)"
    return "resume" if before.get("status") == "running" else "run"


def plan_pipeline(config: PipelineConfig, out: str | Path, from_stage: str | None = None,
                  until: str | None = None) -> list[dict]:
    """What `run_pipeline` would do, stage by stage, without running or changing anything: one row per
    round and stage with its action (see `stage_action`) and the time it took when it was last done."""
    run = Path(out).resolve()
    rounds = config.rounds if until is None else 1
    last = STAGES.index(until) if until else len(STAGES) - 1
    rows, upstream, forced = [], "", False
    for round_ in range(1, rounds + 1):
        record = _read_json(round_dir(run, round_) / "stages.json")
        planned = round_plan(round_config(config, run, round_), run, round_, upstream)
        for stage in STAGES[: last + 1]:
            configs, fingerprint, settings = planned[stage]
            forced = forced or stage == from_stage
            before = record.get(stage, {})
            action = stage_action(before, fingerprint, forced, settings)
            row = {"round": round_, "stage": stage, "fingerprint": fingerprint, "action": action,
                   "seconds_before": before.get("seconds")}
            if stage in REUSABLE_STAGES and action.startswith("rerun") and not forced:
                keep = reusable_labels(before, settings, model_producers(configs, planned, upstream))
                if keep:
                    row["action"] = f"{action[:-1]}; keeps {len(keep)} of {len(configs)} evaluations)"
                    row["kept_fraction"] = len(keep) / len(configs)
            rows.append(row)
        upstream = round_chain(planned)
    return rows


def _run_round(config: PipelineConfig, run: Path, where: Path, round_: int, upstream: str, forced: bool,
               from_stage: str | None, until: str | None) -> tuple[str, bool]:
    """The stages of one round into `where` (recorded in where/stages.json); returns the last fingerprint
    (the next round chains to it) and whether --from has forced reruns."""
    record_path = where / "stages.json"
    record = _read_json(record_path)
    last = STAGES.index(until) if until else len(STAGES) - 1
    name = f"round {round_} " if config.rounds > 1 else ""
    planned = round_plan(config, run, round_, upstream)
    for index, stage in enumerate(STAGES[: last + 1]):
        configs, fingerprint, settings = planned[stage]
        forced = forced or stage == from_stage
        before = record.get(stage, {})
        action = stage_action(before, fingerprint, forced, settings)
        if action == "skipped":
            record[stage] = {"status": "skipped", "fingerprint": fingerprint}
            continue
        if action == "done":
            log.info("%s[%d/%d] %s: done before, skipped", name, index + 1, len(STAGES), stage)
            continue
        producers = model_producers(configs, planned, upstream) if stage in REUSABLE_STAGES else {}
        if action.startswith("rerun"):
            # An evaluation of a model that did not change, with the same settings, is kept (the evaluation
            # finds it complete): a new reward model re-evaluates SML, not SFT and the controls.
            keep = set() if forced else reusable_labels(before, settings, producers)
            if keep:
                log.info("%s: keeping the evaluations of unchanged models: %s", stage, ", ".join(sorted(keep)))
                for label, cfg in configs:
                    if label in keep:
                        _relocate_evaluation(Path(cfg.out), cfg.model)
            _move_aside(where, _stage_outputs(where, stage, [(label, cfg) for label, cfg in configs
                                                             if label not in keep]), stage)
        log.info("%s[%d/%d] %s: %s", name, index + 1, len(STAGES), stage,
                 {"resume": "resuming", "run": "running"}.get(action, action))
        _invalidate_readers(config, run, round_, record, planned, stage)
        record[stage] = {"status": "running", "fingerprint": fingerprint, "started": time.time(),
                         "settings": settings}
        _write_json(record_path, record)
        start = time.perf_counter()
        refused = record.get("ppo", {}).get("status") == "refused"
        try:
            results = {label: _run_one(stage, label, cfg, where) for label, cfg in configs
                       if not (refused and stage in MEASURE_STAGES and label.startswith("sml"))}
        except RewardModelInvalid as err:  # PPO's gate: record why, evaluate the models that exist
            log.warning("%s: refused: %s", stage, err)
            record[stage] = {"status": "refused", "fingerprint": fingerprint, "reason": str(err),
                             "validity": {k: v for k, v in err.report.items() if k != "settings"},
                             "settings": settings}
            _write_json(record_path, record)
            continue
        record[stage] = {"status": "done", "fingerprint": fingerprint,
                         "seconds": round(time.perf_counter() - start, 1), "settings": settings}
        if producers:
            record[stage]["models"] = producers
        _write_json(record_path, record)
        _write_json(where / f"{stage}_result.json", results)
    _write_json(record_path, record)
    return round_chain(planned), forced


def write_summary(config: PipelineConfig, run: Path, record: dict) -> dict:
    """RUN/summary.json: per evaluated model and dataset, n, accuracy and ci95."""
    models: dict[str, dict] = {}
    transfer = [ds + TRANSFER_SUFFIX for ds in config.eval_datasets] if config.transfer else []
    for key in ("base", "base_few_shot", "sft", "sml", *config.controls):
        for ds in (*config.eval_datasets, *transfer):
            metrics = _read_json(run / "eval" / key / dataset_folder(ds) / "metrics.json")
            if metrics:
                models.setdefault(key, {})[ds] = {k: metrics.get(k) for k in ("n", "accuracy", "ci95", "n_no_answer")}
    for ds in config.eval_datasets:
        rerank = _read_json(run / "eval" / "sml_best_of_n" / dataset_folder(ds) / "rerank_metrics.json").get("metrics")
        if rerank:
            from .evaluate import accuracy_ci95

            n = rerank["n_questions"]
            k = round(rerank["best_of_n_accuracy"] * n)
            models.setdefault("sml_best_of_n", {})[ds] = {"n": n, "accuracy": rerank["best_of_n_accuracy"],
                                                          "ci95": list(accuracy_ci95(k, n)),
                                                          "majority_vote_accuracy": rerank.get("majority_vote_accuracy"),
                                                          "first_sample_accuracy": rerank.get("first_sample_accuracy")}
    summary = {"model": config.model, "dataset": config.dataset, "datasets": list(config.eval_datasets) + transfer,
               "models": models, "config": dataclasses.asdict(config),
               # Each stage's full settings stay in stages.json; the config above holds what set them.
               "stages": {stage: {k: v for k, v in info.items() if k != "settings"} for stage, info in record.items()}}
    validity = _read_json(run / "reward" / "validity.json")
    if validity:
        summary["reward_validity"] = {k: validity.get(k) for k in (
            "auroc", "n", "n_correct", "n_questions", "within_question_auroc", "within_question_auroc_ci95",
            "n_questions_with_both", "answer_prior_within_question_auroc", "within_question_auroc_by_gold",
            "by_pair_type", "provenance_baseline_accuracy", "pairwise_accuracy")}
    refused = {stage: info["reason"] for stage, info in record.items() if info.get("status") == "refused"}
    if refused:
        summary["refused"] = refused  # why a model row (sml) is missing
    from .stats import compare_models

    # Every two model rows on the same test questions: difference, paired bootstrap 95% interval, McNemar p.
    comparisons = {ds: compare_models(run, ds) for ds in (*config.eval_datasets, *transfer)}
    summary["comparisons"] = comparisons[config.eval_datasets[0]]
    if transfer:  # the harder test set's settings, beside its rows (models[key]["<dataset>@transfer"])
        summary["transfer"] = {"data": config.transfer, "datasets": transfer}
    if len(comparisons) > 1:
        summary["comparisons_by_dataset"] = comparisons
    _write_json(run / "summary.json", summary)
    return summary


# Settings that make any config a smoke run on tiny-random: every stage real, each a few seconds.
SMOKE = {
    "train_limit": 4, "test_limit": 4, "best_of_n": 2,
    "eval": {"max_new_tokens": 8, "batch_size": 4},
    "generate": {"n_free": 2, "n_gold": 1, "n_wrong": 1, "max_new_tokens": 12},
    "sft": {"max_steps": 2, "batch_size": 2, "save_steps": 0, "eval_steps": 0},
    "reward": {"max_steps": 2, "batch_size": 2, "save_steps": 0, "eval_steps": 0, "validity_questions": 3,
               "validity_samples": 2},
    # A random reward model tracks nothing: the gate would (rightly) refuse PPO, and the smoke run must
    # still exercise it.
    "ppo": {"iterations": 2, "prompts_per_iteration": 2, "samples_per_prompt": 2, "max_new_tokens": 8,
            "mini_batch_size": 4, "micro_batch_size": 2, "eval_steps": 0, "save_steps": 1, "tensorboard": False,
            "min_reward_auroc": 0.0},
    "rerank": {"max_new_tokens": 8},
    # A random model never reaches the gold: let gold-hinted rationales count as top tier so SFT has data,
    # however short their 12 tokens of reasoning are.
    "rank": {"tier_rules": "gold/no_answer=3,gold/inconsistent=3", "sft_min_body_words": 0},
}


def smoke_config(config: PipelineConfig) -> PipelineConfig:
    """The same config shrunk to a smoke run (used with --model tiny-random)."""
    values = dataclasses.asdict(config)
    for key, value in SMOKE.items():
        if isinstance(value, dict):
            values[key] = {**values[key], **value}
        else:
            current = values[key]
            values[key] = value if current is None or key == "best_of_n" and current == 0 else min(current, value)
            if key == "best_of_n" and config.best_of_n == 0:
                values[key] = 0
    values["model"] = "tiny-random"
    return build_config(PipelineConfig, values, "smoke config")
