"""The answer-edit probe of a finished run's reward model, from its validity samples (how the figure in
chain_sum_policy_pairs/reward/validity.json was added: that reward model was trained before the probe existed).

    python results/ladder/probe_answer_edits.py RUN_FOLDER

RUN_FOLDER holds reward/model, reward/config.json and reward/validity_samples.jsonl (a run folder, not an
export: exports leave the model out). Prints {edit kind: {"original_above", "n"}}; the reward stage of runs made
since computes the same figure itself (selfmotivated/validity.py)."""
import json
import sys
from pathlib import Path

from selfmotivated.data import DataConfig, load_examples
from selfmotivated.validity import score_answer_edits

run = Path(sys.argv[1])
config = json.loads((run / "reward" / "config.json").read_text())
first = config["validity_offset"]
data = DataConfig(**{"data_dir": config["data_dir"], **config["validity_data"], "dataset": config["validity_dataset"],
                     "split": "train", "limit": first + config["validity_questions"]})
examples = load_examples(data)[first:]
rows = [json.loads(line) for line in (run / "reward" / "validity_samples.jsonl").read_text().splitlines() if line.strip()]
probe = score_answer_edits(run / "reward" / "model", rows, examples, prompt="zero_shot", chat="auto",
                           templates=config["validity_templates"], seed=config["seed"])
print(json.dumps(probe))
