"""A run's cost before it starts: work per stage from the config, minutes from this machine's (here: fixed)
rates, the rates cached once, and the estimate beside what each stage took in the report."""

import dataclasses
import json
from pathlib import Path

import pytest

from selfmotivated.estimate import (
    ESTIMATE_FILE, Throughput, Work, cached_throughput, estimate_beside_actual, estimate_pipeline,
    load_throughput, plan_with_estimate, write_estimate,
)
from selfmotivated.pipeline import STAGES, load_pipeline_config, smoke_config

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"
RATES = Throughput(forward_tokens_per_s=400.0, lora_tokens_per_s=100.0, full_tokens_per_s=50.0,
                   decode_tokens_per_s={"16": 80.0, "64": 160.0}, measured="fixed for the tests")


def demo(**changes):
    config = smoke_config(load_pipeline_config(DEMO))  # tiny-random: its tokenizer is built locally
    return dataclasses.replace(config, **changes)


def by_stage(estimate):
    return {r["stage"]: r for r in estimate["stages"] if r["round"] == 1}


def test_decoding_time_follows_the_rows_in_flight():
    # 80 tok/s at 16 rows = 0.2 s a step; 160 at 64 = 0.4 s: a line through them
    assert RATES.step_seconds(16) == pytest.approx(0.2) and RATES.step_seconds(64) == pytest.approx(0.4)
    assert RATES.step_seconds(40) == pytest.approx(0.3)
    work = Work()
    work.generate(rows=128, tokens=10, width=64)  # 20 steps of 64 rows
    work.forward_tokens, work.lora_tokens, work.full_tokens = 400, 100, 50
    assert work.generated_tokens == 1280
    assert work.seconds(RATES) == pytest.approx(20 * 0.4 + 1 + 1 + 1)
    work.model_loads = 3  # loading and saving models costs the probe's load time each
    assert work.seconds(dataclasses.replace(RATES, load_seconds=2.0)) == pytest.approx(20 * 0.4 + 3 + 3 * 2.0)
    few = Work()
    few.generate(rows=4, tokens=10, width=64)  # 4 rows never fill 64 slots: 10 steps of 4 rows
    assert few.seconds(RATES) == pytest.approx(10 * RATES.step_seconds(4))


def test_stage_work_follows_the_settings():
    base = by_stage(estimate_pipeline(demo(best_of_n=2), RATES))
    assert [s for s in STAGES if s in base] == [s for s in STAGES if s not in ("ppo_checker", "sft_round2")]
    # Transfer: base, SFT and SML once more on as many test questions as the baseline's (base alone)
    assert base["transfer"]["generated_tokens"] == base["baseline"]["generated_tokens"] * 3
    assert "transfer" not in by_stage(estimate_pipeline(demo(transfer={}), RATES))
    config = demo()
    ppo = config.ppo
    # PPO: iterations x prompts x samples rollouts at the token limit (no periodic eval in the smoke config)
    assert base["ppo"]["generated_tokens"] == ppo["iterations"] * ppo["prompts_per_iteration"] * \
        ppo["samples_per_prompt"] * ppo["max_new_tokens"]
    twice = by_stage(estimate_pipeline(demo(ppo={**ppo, "iterations": 2 * ppo["iterations"]}), RATES))
    assert twice["ppo"]["minutes"] == pytest.approx(2 * base["ppo"]["minutes"], abs=0.011)  # minutes are rounded to 0.01
    assert twice["sft"] == base["sft"]  # other stages do not move
    # The plain path (old log-probs by a forward pass, prompts encoded per sample) costs more forward tokens.
    plain = by_stage(estimate_pipeline(demo(ppo={**ppo, "reuse_sampler_logprobs": False,
                                                 "share_prompts": False}), RATES))
    assert plain["ppo"]["forward_tokens"] > base["ppo"]["forward_tokens"]
    assert plain["ppo"]["minutes"] > base["ppo"]["minutes"]
    # Generation: questions x rationales per question x token limit; more free samples, more tokens.
    gen = config.generate
    n = config.train_limit
    per_q = gen["n_free"] + gen["n_gold"] + gen["n_wrong"]
    assert base["generate"]["generated_tokens"] == n * per_q * (gen["max_new_tokens"] + 16)  # + answer forcing
    controls = by_stage(estimate_pipeline(demo(controls=("ppo_checker", "sft_round2")), RATES))
    assert controls["ppo_checker"]["forward_tokens"] < controls["ppo"]["forward_tokens"]  # no reward model
    assert controls["sft_round2"]["generated_tokens"] == base["ppo"]["generated_tokens"]  # PPO's rollout budget
    # The reward model trained on expert iteration's samples too trains on more tokens.
    on_policy = by_stage(estimate_pipeline(demo(controls=("sft_round2",),
                                                reward={**config.reward, "policy_pairs": "sft_round2"}), RATES))
    assert on_policy["reward"]["minutes"] > controls["reward"]["minutes"]
    slower = Throughput(**{**dataclasses.asdict(RATES), "full_tokens_per_s": 25.0})
    assert by_stage(estimate_pipeline(demo(), slower))["sft"]["minutes"] > base["sft"]["minutes"]  # full SFT


def test_a_probe_beside_other_work_is_called_busy():
    from selfmotivated.estimate import busy_reason

    assert busy_reason(0.1, threads=2, cores=2) == "" and busy_reason(None, 2, 2) == ""
    assert "busy machine (load average 2.0 before the probe, 2 threads on 2 cores)" in busy_reason(2.0, 2, 2)
    assert busy_reason(2.0, threads=2, cores=8) == ""  # room on the other cores


def test_rates_are_measured_once_then_read_from_the_cache(tmp_path):
    calls = []

    def probe(model, dtype="auto", device="auto"):
        calls.append(model)
        return RATES

    cache = tmp_path / "throughput.json"
    assert cached_throughput("tiny-random", cache=cache) is None
    assert load_throughput("tiny-random", probe=probe, cache=cache) == RATES
    assert load_throughput("tiny-random", probe=probe, cache=cache) == RATES
    assert calls == ["tiny-random"]
    load_throughput("tiny-random", probe=probe, cache=cache, refresh=True)
    assert len(calls) == 2 and cached_throughput("tiny-random", cache=cache) == RATES


def test_plan_rows_get_estimates_and_a_failed_probe_leaves_the_plan_alone(tmp_path, monkeypatch):
    from selfmotivated.pipeline import plan_pipeline

    config = demo()
    rows, estimate, note = plan_with_estimate(config, plan_pipeline(config, tmp_path / "run"),
                                              probe=lambda *a, **k: RATES)
    assert all(r["estimated_minutes"] is not None for r in rows if r["action"] != "skipped")
    assert "min for what would run" in note and f"{estimate['total_minutes']:.1f} min for every stage" in note
    # Evaluations a rerun keeps (models that did not change) are not counted in what would run.
    todo = float(note.split(" min for what would run")[0].split()[-1])
    kept = plan_pipeline(config, tmp_path / "run")
    for row in kept:
        if row["stage"] == "evaluate":
            row["kept_fraction"] = 0.5
    _, _, less = plan_with_estimate(config, kept, probe=lambda *a, **k: RATES)
    evaluate = next(r["estimated_minutes"] for r in rows if r["stage"] == "evaluate")
    assert float(less.split(" min for what would run")[0].split()[-1]) == pytest.approx(todo - evaluate / 2, abs=0.11)

    def broken(*a, **k):
        raise RuntimeError("no model here")

    busy = dataclasses.replace(RATES, busy="measured on a busy machine (load average 4.0 with 2 threads)")
    monkeypatch.setattr("selfmotivated.estimate._cache_path", lambda: tmp_path / "throughput.json")
    rows, estimate, note = plan_with_estimate(config, plan_pipeline(config, tmp_path / "run"), refresh=True,
                                              probe=lambda *a, **k: busy)
    assert "warning: rates measured on a busy machine (load average 4.0" in note

    rows, estimate, note = plan_with_estimate(config, plan_pipeline(config, tmp_path / "run"), refresh=True,
                                              probe=broken)
    assert estimate is None and "no estimate: RuntimeError: no model here" in note
    assert all("estimated_minutes" not in r for r in rows)


def test_the_report_sets_the_estimate_beside_what_each_stage_took(tmp_path, monkeypatch):
    from selfmotivated.report import make_report

    run = tmp_path / "run"
    cache = tmp_path / "throughput.json"
    assert write_estimate(demo(), run, cache=cache) is None  # no rates cached: nothing written, nothing probed
    load_throughput("tiny-random", probe=lambda *a, **k: RATES, cache=cache)
    estimate = write_estimate(demo(), run, cache=cache)
    assert json.loads((run / ESTIMATE_FILE).read_text())["total_minutes"] == estimate["total_minutes"]
    assert write_estimate(demo(), run, cache=cache) is None  # a resumed run keeps the plan it began with
    (run / "stages.json").write_text(json.dumps({"ppo": {"status": "done", "seconds": 90.0, "fingerprint": "x"}}))
    rows = {r["stage"]: r for r in estimate_beside_actual(run)}
    assert rows["ppo"]["minutes"] == 1.5 and rows["ppo"]["estimated_minutes"] == by_stage(estimate)["ppo"]["minutes"]
    assert rows["sft"]["minutes"] is None  # not run yet
    make_report([str(run)])
    text = (run / "report.md").read_text()
    assert "Estimated before the run" in text and "took / estimated" in text


def test_the_busy_check_reads_the_cores_now_and_a_busy_probe_is_not_cached(tmp_path, monkeypatch):
    """Load is read from two /proc/stat samples (a decaying load average would call a machine busy for
    minutes after a job ends); rates probed on a busy machine serve one plan and are not cached."""
    import selfmotivated.estimate as est

    real_cpu_times = est._cpu_times
    assert real_cpu_times(str(tmp_path / "missing")) is None
    stat = tmp_path / "stat"
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 150 850 0 0 0 0 0 0\n"])
    monkeypatch.setattr(est, "_cpu_times", lambda path, real=est._cpu_times: (
        stat.write_text(next(samples)), real(str(stat)))[1])
    monkeypatch.setattr(est.os, "cpu_count", lambda: 2)
    busy = est._load_average(seconds=0.0)
    assert busy == pytest.approx(2 * 200 / 250)  # 200 of 250 jiffies were not idle, over 2 cores

    cache = tmp_path / "throughput.json"
    calls = []
    busy_rates = dataclasses.replace(RATES, busy="measured on a busy machine")
    rates = est.load_throughput("tiny-random", probe=lambda *a, **k: calls.append(1) or busy_rates, cache=cache)
    assert rates.busy and not cache.exists()
    est.load_throughput("tiny-random", probe=lambda *a, **k: calls.append(1) or RATES, cache=cache)
    assert len(calls) == 2 and est.cached_throughput("tiny-random", cache=cache) == RATES
