"""`sml run` on tiny-random: every stage real, resume at stage boundaries, fingerprint invalidation, config errors."""

import json
import re
from pathlib import Path

import pytest
import yaml

from selfmotivated.cli import main
from selfmotivated.pipeline import STAGES, load_pipeline_config, plan_pipeline, run_pipeline, smoke_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
DATASET = "rg:chain_sum"  # the demo's
SHIPPED = sorted(REPO.glob("configs/*.yaml")) + sorted(REPO.glob("results/*/config.yaml"))


def stages(run: Path) -> dict:
    return json.loads((run / "stages.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One full smoke run shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("pipeline") / "run"
    config = smoke_config(load_pipeline_config(DEMO))
    config.report = False
    config.controls = ("ppo_checker", "sft_round2")
    config.best_of_n = 2  # off in the demo, on here: every stage runs
    assert config.transfer == {"task_options": {"min_terms": 3, "max_terms": 3}}  # the demo's: two numbers -> three
    summary = run_pipeline(config, run)
    return run, config, summary


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_are_valid_for_every_stage(path, tmp_path, monkeypatch):
    """The presets and the results' configs (what the README tells people to run) build every stage's config,
    templates files included, as `sml run --plan` does."""
    monkeypatch.chdir(REPO)  # results configs name their templates file from the repository root
    config = load_pipeline_config(path)
    rows = plan_pipeline(config, tmp_path / "run")
    assert [r["stage"] for r in rows if r["round"] == 1] == list(STAGES)
    assert {r["action"] for r in rows} <= {"run", "skipped"}


def test_transfer_evaluates_every_model_one_level_up(smoke_run, tmp_path):
    """The transfer stage evaluates each model on the harder test set, beside the dataset's own, and the
    summary has its rows and paired comparisons."""
    run, config, summary = smoke_run
    ds = f"{DATASET}@transfer"
    assert summary["transfer"] == {"data": config.transfer, "datasets": [ds]}
    assert set(summary["models"]) - {"base_few_shot", "sml_best_of_n"} == \
        {key for key, cells in summary["models"].items() if ds in cells}
    own = [json.loads(x)["question"] for x in
           (run / "eval" / "sft" / DATASET / "predictions.jsonl").read_text().splitlines()]
    harder = [json.loads(x)["question"] for x in (run / "eval" / "sft" / ds / "predictions.jsonl").read_text().splitlines()]
    assert len(harder) == len(own) and not set(harder) & set(own)
    terms = lambda q: len(re.findall(r"\d+", q.split(":")[-1]))  # noqa: E731 - numbers in "47 - 18 + 3 ="
    assert {terms(q) for q in harder} == {3} and {terms(q) for q in own} == {2}
    assert "sml_vs_sft" in summary["comparisons_by_dataset"][ds]
    from selfmotivated.report import make_report

    make_report([str(run)], out=str(tmp_path / "report"), plots=False)
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"| model | {DATASET} | {ds} |" in text and "one difficulty level above training" in text


def test_every_stage_runs_and_summary_has_all_models(smoke_run):
    run, config, summary = smoke_run
    assert [s for s in STAGES if stages(run)[s]["status"] == "done"] == list(STAGES)
    # No few-shot baseline: generated tasks have no exemplars (the demo's few_shot_baseline is off).
    assert set(summary["models"]) == {"base", "sft", "sml", "ppo_checker", "sft_round2", "sml_best_of_n"}
    # The reward stage's validity report: fresh samples of the training questions after PPO's own.
    validity = summary["reward_validity"]
    assert validity["n"] == 6 and validity["n_questions"] == 3 and "by_pair_type" in validity
    assert {"answer_prior_within_question_auroc", "within_question_auroc_by_gold"} <= set(validity)
    samples = [json.loads(x) for x in (run / "reward" / "validity_samples.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in samples}) == 3 and all(isinstance(r["score"], float) for r in samples)
    ppo_questions = {json.loads(x)["id"] for x in (run / "eval" / "base" / DATASET /
                                                     "predictions.jsonl").read_text().splitlines()}
    assert not {r["id"] for r in samples} & ppo_questions  # never the test split
    assert json.loads((run / "ppo_checker" / "run.json").read_text())["config"]["reward"] == "checker"
    assert (run / "ppo_checker" / "policy" / "config.json").exists()
    # Expert iteration spends PPO's sampling budget: 2 iterations x 2 prompts x 2 samples.
    samples = [json.loads(x) for x in (run / "sft_round2" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and (run / "sft_round2" / "model" / "config.json").exists()
    for model in summary["models"].values():
        m = model[DATASET]
        assert m["n"] == 4 and 0 <= m["accuracy"] <= 1 and len(m["ci95"]) == 2
    saved = json.loads((run / "summary.json").read_text())
    assert saved["models"] == summary["models"]
    assert (run / "sft" / "model" / "config.json").exists()
    assert (run / "ppo" / "policy" / "config.json").exists()
    assert (run / "ranked").is_dir() and (run / "rationales.sqlite").exists()


def test_rerun_skips_everything(smoke_run, caplog):
    run, config, _ = smoke_run
    kept = [*(run / "eval").rglob("predictions.jsonl"), run / "config.yaml"]  # config.yaml: the run's start
    before = {p: p.stat().st_mtime_ns for p in kept}
    with caplog.at_level("INFO"):
        run_pipeline(config, run)
    assert sum("done before, skipped" in r.message for r in caplog.records) == len(STAGES)
    assert {p: p.stat().st_mtime_ns for p in kept} == before


def test_changed_setting_reruns_that_stage_and_later(tmp_path, smoke_run):
    import dataclasses
    import shutil

    src, config, _ = smoke_run
    run = tmp_path / "copy"  # also shows a copied run folder resumes: fingerprints name paths relative to it
    shutil.copytree(src, run)
    first = stages(run)
    run_pipeline(dataclasses.replace(config, reward={**config.reward, "learning_rate": 1e-3}), run)
    after = stages(run)
    for stage in ("baseline", "generate", "rank", "sft"):
        assert after[stage]["fingerprint"] == first[stage]["fingerprint"]
    for stage in ("reward", "ppo", "evaluate", "best_of_n", "transfer"):
        assert after[stage]["fingerprint"] != first[stage]["fingerprint"] and after[stage]["status"] == "done"
    # The controls start from the SFT model and read no reward model: not retrained.
    for stage in ("ppo_checker", "sft_round2"):
        assert after[stage]["fingerprint"] == first[stage]["fingerprint"]
    stale = list((run / "stale").iterdir())
    assert any(p.name.startswith("reward-") for p in stale)  # old output moved aside, not deleted
    # The evaluations of models that did not change (SFT, the controls, base on the transfer set) are kept, not
    # redone; SML's are redone (moved aside first).
    moved = {q.name for p in stale if p.name.startswith(("evaluate-", "transfer-")) for q in p.iterdir()}
    assert moved and all(name.startswith("eval__sml") for name in moved)
    assert after["evaluate"]["models"]["sft/" + DATASET] == after["sft"]["fingerprint"]
    assert after["evaluate"]["models"]["sml/" + DATASET] == after["ppo"]["fingerprint"]
    for key in ("sft", "ppo_checker", "sft_round2"):
        folder = run / "eval" / key / DATASET
        assert (folder / "predictions.jsonl").read_text() == (src / "eval" / key / DATASET / "predictions.jsonl").read_text()
        kept = json.loads((folder / "metrics.json").read_text())  # with the time it took when it was made
        assert kept["seconds"] == json.loads((src / "eval" / key / DATASET / "metrics.json").read_text())["seconds"] > 0
    # --from forces every evaluation again.
    run_pipeline(config, run, from_stage="evaluate")
    moved_again = {q.name for p in (run / "stale").iterdir() if p.name.startswith("evaluate-") for q in p.iterdir()}
    assert any(name.startswith("eval__sft__") for name in moved_again)


def test_an_ablation_reuses_what_it_does_not_change(tmp_path, smoke_run, capsys):
    """sml run --reuse: a new run folder starts from a finished run, every stage the new config leaves unchanged
    brought over (weights hard-linked), so only the reward model, PPO and SML's evaluations run again."""
    import dataclasses

    from selfmotivated.pipeline import plan_pipeline, reuse_run

    src, config, _ = smoke_run
    ablation = dataclasses.replace(config, reward={**config.reward, "learning_rate": 1e-3})
    run = tmp_path / "ablation"
    source_record = (src / "stages.json").read_text()
    taken = reuse_run(ablation, run, src)
    assert taken[:6] == ["baseline", "generate", "rank", "sft", "ppo_checker", "sft_round2"]
    assert taken[6] == f"evaluate (ppo_checker/{DATASET}, sft/{DATASET}, sft_round2/{DATASET})"
    assert taken[7].startswith("transfer (base/") and "sml/" not in taken[7] and len(taken) == 8
    weights = "sft/model/model.safetensors"
    assert (run / weights).stat().st_ino == (src / weights).stat().st_ino  # shared, not copied
    assert (run / "stages.json").stat().st_ino != (src / "stages.json").stat().st_ino
    actions = {r["stage"]: r["action"] for r in plan_pipeline(ablation, run)}
    assert [actions[s] for s in taken[:6]] == ["done"] * 6 and actions["reward"] == "run"
    run_pipeline(ablation, run)
    assert {r["action"] for r in plan_pipeline(ablation, run)} == {"done"}
    assert not (run / "stale").exists()  # nothing was there to move aside: only what stays was brought over
    for key in ("sft", "sml"):
        assert (run / "eval" / key / DATASET / "metrics.json").is_file()
    assert (src / "stages.json").read_text() == source_record  # the source is untouched
    with pytest.raises(ValueError, match="already holds a run"):
        reuse_run(ablation, run, src)
    with pytest.raises(ValueError, match="no stages.json"):
        reuse_run(ablation, tmp_path / "other", tmp_path / "nowhere")
    assert main(["run", str(DEMO), "--model", "tiny-random", "--out", str(tmp_path / "cli"), "--reuse", str(src),
                 "--until", "rank"]) in (0, None)
    assert "reused from" in capsys.readouterr().out


def test_export_copies_a_runs_results_without_its_weights(tmp_path, smoke_run, capsys):
    from selfmotivated.pipeline import export_run
    from selfmotivated.stats import compare_all

    src, _, _ = smoke_run
    dest = tmp_path / "results"
    counts = export_run(src, dest)
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert counts["copied"] == len(files) > 20 and counts["unchanged"] == 0
    assert {"stages.json", "summary.json", "ranked/pairs.jsonl", "sft/metrics.jsonl", "reward/validity.json",
            f"eval/sml/{DATASET}/predictions.jsonl", "sft_round2/samples.jsonl"} <= files
    assert not [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".sqlite"))
                or "/checkpoint" in f or f.startswith("stale/") or "tokenizer" in f], files
    weights = [p for p in src.rglob("*.safetensors")]
    assert weights  # the run has weights; none came along
    # the exported folder still answers the paired comparisons
    assert compare_all(dest) == compare_all(src)
    (src / "summary.json").touch()  # same bytes: nothing to write again
    assert export_run(src, dest) == {"copied": 0, "unchanged": len(files), "skipped_large": []}
    assert export_run(src, tmp_path / "small", max_file_mb=0.001)["skipped_large"]
    with pytest.raises(ValueError, match="inside the run folder"):
        export_run(src, src / "results")
    with pytest.raises(ValueError, match="not a `sml run` folder"):
        export_run(tmp_path / "nowhere", dest)
    assert main(["export", str(src), str(tmp_path / "cli")]) in (0, None)
    assert "files written to" in capsys.readouterr().out


def test_a_stage_made_anew_under_the_same_fingerprint_reruns_what_reads_it(tmp_path, smoke_run):
    """--from ppo --until ppo trains SML's policy again with unchanged settings: the evaluations recorded done on
    the old policy must rerun on the next `sml run`; the controls and the reward model, which do not read it,
    stay done."""
    import shutil

    from selfmotivated.pipeline import plan_pipeline

    src, config, _ = smoke_run
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    run_pipeline(config, run, from_stage="ppo", until="ppo")
    actions = {r["stage"]: r["action"] for r in plan_pipeline(config, run)}
    assert [actions[s] for s in ("sft", "ppo_checker", "sft_round2", "reward", "ppo", "baseline")] == ["done"] * 6
    assert {actions[s] for s in ("evaluate", "best_of_n", "transfer")} == {"rerun (an earlier stage was redone)"}
    run_pipeline(config, run)
    assert {r["action"] for r in plan_pipeline(config, run)} == {"done"}
    assert not any("invalidated" in info for info in stages(run).values())


def test_plan_says_what_would_run_and_changes_nothing(tmp_path, smoke_run, capsys):
    import dataclasses

    from selfmotivated.pipeline import plan_pipeline

    run, config, _ = smoke_run
    before = (run / "stages.json").read_text()
    actions = lambda rows: [r["action"] for r in rows]  # noqa: E731
    assert actions(plan_pipeline(config, run)) == ["done"] * len(STAGES)
    changed = plan_pipeline(dataclasses.replace(config, reward={**config.reward, "learning_rate": 1e-3}), run)
    # The plan names what changed: stages.json keeps each stage's settings beside its fingerprint.
    # The controls (after sft) read no reward model: done; the reward model and what follows it rerun.
    # Of evaluate and transfer, the evaluations of the models that do not change are kept (and not estimated).
    assert actions(changed) == ["done"] * 6 + ["rerun (learning_rate changed)"] + \
        ["rerun (an earlier stage changed)"] + ["rerun (an earlier stage changed; keeps 3 of 4 evaluations)"] + \
        ["rerun (an earlier stage changed)"] + ["rerun (an earlier stage changed; keeps 4 of 5 evaluations)"]
    more = plan_pipeline(dataclasses.replace(config, test_limit=6, eval={**config.eval, "max_new_tokens": 3}), run)
    assert more[0]["action"] == "rerun (data.limit, max_new_tokens changed)"
    assert actions(plan_pipeline(config, run, from_stage="ppo", until="evaluate")) == \
        ["done"] * 7 + ["rerun (--from)"] * 2
    assert actions(plan_pipeline(config, tmp_path / "new")) == ["run"] * len(STAGES)
    assert not (tmp_path / "new").exists()
    two = plan_pipeline(dataclasses.replace(config, rounds=2), tmp_path / "new")
    assert [(r["round"], r["action"]) for r in two if r["stage"] == "baseline"] == [(1, "run"), (2, "skipped")]

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    record = json.loads(before)
    record["ppo"] = {**record["ppo"], "status": "running"}
    (interrupted / "stages.json").write_text(json.dumps(record))
    assert plan_pipeline(config, interrupted)[STAGES.index("ppo")]["action"] == "resume"

    assert main(["run", str(DEMO), "--model", "tiny-random", "--out", str(run), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "reward" in out and "done (took" in out
    assert (run / "stages.json").read_text() == before


def test_more_test_questions_rerun_only_the_evaluations(smoke_run):
    """The test subset is a measuring setting: widening it must not retrain anything."""
    import dataclasses

    from selfmotivated.pipeline import MEASURE_STAGES, round_plan

    run, config, _ = smoke_run
    before = round_plan(config, run, 1, "")
    after = round_plan(dataclasses.replace(config, test_limit=6), run, 1, "")
    for stage in STAGES:
        assert (after[stage][1] != before[stage][1]) == (stage in MEASURE_STAGES), stage
    changed = round_plan(dataclasses.replace(config, sft={**config.sft, "learning_rate": 1e-3}), run, 1, "")
    assert [s for s in STAGES if changed[s][1] != before[s][1]] == \
        ["sft", "ppo_checker", "sft_round2", "reward", "ppo", "evaluate", "best_of_n", "transfer"]


def test_prompt_templates_reach_every_prompt_and_count_by_content(tmp_path, smoke_run):
    """A templates file is used by every stage that builds prompts; editing it (or a new version of our
    own templates) reruns from the baseline, while the same content under another name reruns nothing."""
    import dataclasses

    from selfmotivated.pipeline import round_plan

    run, config, _ = smoke_run
    before = round_plan(config, run, 1, "")
    same = tmp_path / "same.json"
    same.write_text("{}")
    assert {s: fp for s, (_, fp, _) in round_plan(dataclasses.replace(config, templates=str(same)), run, 1, "").items()} \
        == {s: fp for s, (_, fp, _) in before.items()}
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({"response_start": "Let us reason."}))
    after = round_plan(dataclasses.replace(config, templates=str(edited)), run, 1, "")
    assert all(after[s][1] != before[s][1] for s in STAGES)
    for stage in ("baseline", "generate", "ppo", "evaluate", "best_of_n"):
        assert all(cfg.templates == str(edited) for _, cfg in after[stage][0]), stage
    with pytest.raises(FileNotFoundError, match="missing.json"):
        dataclasses.replace(config, templates=str(tmp_path / "missing.json"))


def test_second_round_starts_from_the_first_rounds_sml_model(tmp_path, smoke_run):
    import dataclasses
    import shutil

    first, config, _ = smoke_run
    run = tmp_path / "run"
    shutil.copytree(first, run)  # round 1 is done (and a copied run folder resumes)
    summary = run_pipeline(dataclasses.replace(config, rounds=2, report=True), run)

    assert all(v["status"] == "done" for v in stages(run).values())  # round 1 was not rerun
    two = run / "round-2"
    assert stages(two)["baseline"]["status"] == "skipped"
    assert [s for s in STAGES[1:] if stages(two)[s]["status"] == "done"] == list(STAGES[1:])
    settings = yaml.safe_load((two / "config.yaml").read_text())
    assert settings["model"] == str((run / "ppo" / "policy").resolve())
    assert (two / "rationales.sqlite").exists() and (two / "ppo" / "policy" / "config.json").exists()
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert set(summary["rounds"][1]["models"]) == {"sft", "sml", "ppo_checker", "sft_round2", "sml_best_of_n"}
    assert json.loads((run / "summary.json").read_text())["rounds"][1]["models"] == summary["rounds"][1]["models"]
    assert (two / "report.html").exists() and (run / "report.html").exists()
    side_by_side = (run / "rounds" / "report.md").read_text()
    assert "round-2" in side_by_side

    # Round 2 chains to round 1: a changed round-1 setting reruns that stage and every stage of round 2.
    from selfmotivated.pipeline import round_chain, round_config, round_plan

    def plans(settings):
        one = round_plan(settings, run, 1, "")
        return one, round_plan(round_config(settings, run, 2), run, 2, round_chain(one))

    one, second = plans(dataclasses.replace(config, rounds=2))
    assert {s: fp for s, (_, fp, _) in second.items()} == {s: stages(two)[s]["fingerprint"] for s in STAGES}
    changed_one, changed_two = plans(dataclasses.replace(config, rounds=2, ppo={**config.ppo, "learning_rate": 1e-3}))
    assert changed_one["reward"][1] == one["reward"][1] and changed_one["ppo"][1] != one["ppo"][1]
    assert all(changed_two[s][1] != second[s][1] for s in STAGES)


def test_rounds_must_be_positive(tmp_path, capsys):
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        smoke_config(load_pipeline_config(DEMO, {"rounds": 0}))
    assert main(["run", str(DEMO), "--model", "tiny-random", "--rounds", "0", "--out", str(tmp_path / "r")]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err


def test_interrupted_stage_resumes(tmp_path, monkeypatch):
    from selfmotivated import pipeline

    config = smoke_config(load_pipeline_config(DEMO))
    config.report = False
    run = tmp_path / "run"
    real = pipeline._run_one
    calls = []

    def crash_in_sft(stage, label, cfg, run_dir):
        calls.append(stage)
        if stage == "sft":
            raise KeyboardInterrupt("simulated stop")
        return real(stage, label, cfg, run_dir)

    monkeypatch.setattr(pipeline, "_run_one", crash_in_sft)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run, until="sft")
    assert stages(run)["sft"]["status"] == "running" and stages(run)["generate"]["status"] == "done"
    monkeypatch.setattr(pipeline, "_run_one", real)
    run_pipeline(config, run, until="sft")
    assert stages(run)["sft"]["status"] == "done" and "reward" not in stages(run)


def test_config_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "tiny-random", "sft": {"learning_rat": 1e-4}}))
    with pytest.raises(ValueError, match=r"sft: unknown key\(s\) \['learning_rat'\]"):
        load_pipeline_config(bad)
    bad.write_text(yaml.safe_dump({"modle": "tiny-random"}))
    assert main(["run", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "modle" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"ppo": {"iterations": "many"}}))
    with pytest.raises(ValueError, match="iterations"):
        load_pipeline_config(bad)


def test_until_and_from(tmp_path):
    config = smoke_config(load_pipeline_config(DEMO))
    config.report = False
    run = tmp_path / "run"
    run_pipeline(config, run, until="generate")
    assert set(stages(run)) == {"baseline", "generate"}
    first = stages(run)["generate"]
    run_pipeline(config, run, until="generate", from_stage="generate")
    assert stages(run)["generate"]["fingerprint"] == first["fingerprint"]
    assert any(p.name.startswith("generate-") for p in (run / "stale").iterdir())
    with pytest.raises(ValueError, match="not a stage"):
        run_pipeline(config, run, until="nope")


def test_ppo_refuses_a_reward_model_that_does_not_track_correctness(tmp_path, smoke_run):
    """Below ppo.min_reward_auroc the PPO stage is refused and recorded; the models that exist are still
    evaluated, the summary says why there is no SML row, and a rerun does not retry."""
    import dataclasses
    import shutil

    src, config, _ = smoke_run
    run = tmp_path / "gated"
    shutil.copytree(src, run)
    strict = dataclasses.replace(config, ppo={**config.ppo, "min_reward_auroc": 1.01})  # no AUROC reaches it
    summary = run_pipeline(strict, run)
    record = stages(run)
    assert record["ppo"]["status"] == "refused" and "does not track correctness" in record["ppo"]["reason"]
    assert record["ppo"]["validity"]["n"] == summary["reward_validity"]["n"]
    assert "sml" not in summary["models"] and "sml_best_of_n" not in summary["models"]
    assert {"base", "sft", "ppo_checker", "sft_round2"} <= set(summary["models"])
    assert "min_reward_auroc" in summary["refused"]["ppo"]
    assert not (run / "eval" / "sml" / DATASET / "metrics.json").exists()
    assert not (run / "ppo" / "policy").exists()
    assert [r["action"] for r in plan_pipeline(strict, run)] == ["done"] * len(STAGES)


def test_ppo_samples_as_many_tokens_as_the_final_evaluation(tmp_path):
    from selfmotivated.pipeline import ppo_config

    config = load_pipeline_config(DEMO)
    config.ppo = {**config.ppo, "max_new_tokens": 33}
    assert ppo_config(config, tmp_path).max_new_tokens == 33  # a preset's own wins
    config.ppo = {k: v for k, v in config.ppo.items() if k != "max_new_tokens"}
    assert ppo_config(config, tmp_path).max_new_tokens == config.eval["max_new_tokens"]
    config.eval = {**config.eval, "max_new_tokens": 77}
    assert ppo_config(config, tmp_path).max_new_tokens == 77
    config.eval = {k: v for k, v in config.eval.items() if k != "max_new_tokens"}
    from selfmotivated.evaluate import EvalConfig

    assert ppo_config(config, tmp_path).max_new_tokens == EvalConfig().max_new_tokens


def test_a_setting_added_later_counts_only_away_from_its_old_behaviour(tmp_path):
    """ppo.minibatch_by_question came after runs were made: at False (their behaviour) it is not in the
    fingerprint, so they stay done; at True it is, and PPO reruns."""
    import dataclasses

    from selfmotivated.pipeline import round_plan

    config = load_pipeline_config(DEMO)
    config.ppo = {k: v for k, v in config.ppo.items() if k != "minibatch_by_question"}  # the demo sets it
    before = round_plan(config, tmp_path, 1, "")
    assert "minibatch_by_question" not in json.dumps(before["ppo"][2])
    same = round_plan(dataclasses.replace(config, ppo={**config.ppo, "minibatch_by_question": False}), tmp_path, 1, "")
    assert same["ppo"][1] == before["ppo"][1]
    grouped = round_plan(dataclasses.replace(config, ppo={**config.ppo, "minibatch_by_question": True}), tmp_path, 1, "")
    assert grouped["ppo"][1] != before["ppo"][1] and grouped["reward"][1] == before["reward"][1]


def test_the_checker_control_ignores_smls_gate_threshold(tmp_path):
    """ppo_checker reads no reward model: lowering SML's min_reward_auroc reruns SML's PPO, not the control."""
    import dataclasses

    from selfmotivated.pipeline import round_plan

    config = dataclasses.replace(load_pipeline_config(DEMO), controls=("ppo_checker",))
    config.ppo = {k: v for k, v in config.ppo.items() if k != "min_reward_auroc"}
    before = round_plan(config, tmp_path, 1, "")
    lowered = round_plan(dataclasses.replace(config, ppo={**config.ppo, "min_reward_auroc": 0.0}), tmp_path, 1, "")
    assert lowered["ppo_checker"][1] == before["ppo_checker"][1] and lowered["ppo"][1] != before["ppo"][1]


def test_a_bad_transfer_setting_fails_when_the_config_loads(tmp_path):
    """Not after hours of training at the last stage: an unknown task option, or a key the transfer set cannot
    change, is an error naming `transfer` when the config is read."""
    text = (REPO / "configs" / "demo.yaml").read_text().replace("{min_terms: 3, max_terms: 3}", "{max_term: 3}")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"transfer: rg:chain_sum: unknown task option\(s\) \['max_term'\]"):
        load_pipeline_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="transfer: dataset cannot change"):
        load_pipeline_config(DEMO, {"transfer": {"dataset": "synthetic_coin_flip"}})


def test_reward_on_policy_pairs_reads_expert_iterations_samples_and_chains_to_them(tmp_path):
    """reward.policy_pairs: sft_round2 trains the reward model on the run's expert-iteration samples too: the path
    is the run's, the reward stage (and what follows) is redone when those samples are, and leaving the key out
    (or at its default) keeps a finished run's fingerprints."""
    import dataclasses

    from selfmotivated.pipeline import round_plan

    config = dataclasses.replace(load_pipeline_config(DEMO), controls=("sft_round2",))
    before = round_plan(config, tmp_path, 1, "")
    assert "policy_pairs" not in json.dumps(before["reward"][2])
    same = round_plan(dataclasses.replace(config, reward={**config.reward, "policy_pairs": None,
                                                          "policy_pairs_per_question": 16}), tmp_path, 1, "")
    assert same["reward"][1] == before["reward"][1]
    on_policy = dataclasses.replace(config, reward={**config.reward, "policy_pairs": "sft_round2"})
    plan = round_plan(on_policy, tmp_path, 1, "")
    assert plan["reward"][0][0][1].policy_pairs == str(tmp_path / "sft_round2")
    assert plan["reward"][1] != before["reward"][1] and plan["ppo"][1] != before["ppo"][1]
    assert plan["sft_round2"][1] == before["sft_round2"][1]
    # PPO's iterations set expert iteration's sample budget, nothing of the reward model's own settings.
    for cfg, chained in ((config, False), (on_policy, True)):
        longer = round_plan(dataclasses.replace(cfg, ppo={**cfg.ppo, "iterations": 99}), tmp_path, 1, "")
        assert longer["sft_round2"][1] != round_plan(cfg, tmp_path, 1, "")["sft_round2"][1]
        assert (longer["reward"][1] != round_plan(cfg, tmp_path, 1, "")["reward"][1]) is chained
    with pytest.raises(ValueError, match="sft_round2 control"):
        round_plan(dataclasses.replace(on_policy, controls=()), tmp_path, 1, "")


def test_a_reward_model_on_policy_pairs_runs_through_the_pipeline(tmp_path, smoke_run):
    """reward.policy_pairs: sft_round2 in a whole run: the reward model reads expert iteration's samples beside
    the rank's pairs (a tiny random model is never right, so the samples are marked as if every third were)."""
    import dataclasses

    from selfmotivated.pipeline import reuse_run
    from selfmotivated.rationales import load_pairs

    src, config, _ = smoke_run
    run = tmp_path / "policy_pairs"
    ablation = dataclasses.replace(config, reward={**config.reward, "policy_pairs": "sft_round2"})
    reuse_run(ablation, run, src)
    folder = run / "sft_round2"
    samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    for i, row in enumerate(samples):
        row["correct"] = i % 3 == 0
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    prompts = {r["question_id"]: r["prompt"] for r in load_pairs(run / "ranked")}
    (folder / "kept.jsonl").write_text("".join(  # expert iteration keeps the prompt of each right sample
        json.dumps({"question_id": r["id"], "prompt": prompts[r["id"]], "response": r["text"]}) + "\n"
        for r in samples if r["correct"] and r["id"] in prompts))
    run_pipeline(ablation, run, until="reward")
    record = json.loads((run / "reward" / "run.json").read_text())
    rank_pairs = json.loads((src / "reward" / "run.json").read_text())["data"]["pair_rows"]
    assert record["status"] == "finished" and record["data"]["pair_rows"] > rank_pairs
