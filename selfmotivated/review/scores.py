"""Reward-model scores of a run's rationales, computed once and cached in `RUN/review/scores.jsonl`.

Scoring thousands of rationales takes minutes on a CPU, so it never happens on a page load: `Scorer` works
in a background thread, a chunk at a time, appending each chunk to the cache (a killed server loses at most
one chunk and the next start resumes), while the page shows what is already scored and the progress.

A rationale is scored as the reward model was trained on it (rank.pair_record): the question's evaluation
prompt followed by the rationale's response. A cached score counts only for the same rationale text and the
same reward model (a digest of RUN/reward/model's files), so retraining the reward model rescores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from .store import REVIEW_DIR

log = logging.getLogger(__name__)

SCORES_NAME = "scores.jsonl"
CHUNK = 32  # rationales scored and written at a time


def reward_model_dir(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir) / "reward" / "model"
    if (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return folder
    return None


def model_digest(folder: Path) -> str:
    """A digest of every file of a reward model folder (names and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def scores_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / REVIEW_DIR / SCORES_NAME


def read_scores(run_dir: str | Path, model: str | None = None, texts: dict[int, str] | None = None
                ) -> dict[int, float]:
    """rid -> score of the cache; with `model`, only scores of that reward model; with `texts` (rid -> text
    sha), only scores of the same text. A torn last line (a kill mid-write) is skipped."""
    path = scores_path(run_dir)
    out: dict[int, float] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            rid, score = int(row["rid"]), float(row["score"])
        except (ValueError, KeyError, TypeError):
            continue
        if model is not None and row.get("model") != model:
            continue
        if texts is not None and texts.get(rid) != row.get("text_sha"):
            continue
        out[rid] = score
    return out


class Scorer:
    """Scores every rationale of `data` (a source.ReviewData) not yet in the cache. `start()` runs it in a
    daemon thread, `run()` in the caller's; `scores` holds every usable score so far (cached and new)."""

    def __init__(self, data, batch_size: int = 8, device: str = "cpu"):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.model_dir = reward_model_dir(data.run_dir)
        self.model = model_digest(self.model_dir) if self.model_dir else None
        texts = {r["rid"]: r["text_sha"] for r in data.rationales}
        self.scores: dict[int, float] = read_scores(data.run_dir, self.model, texts) if self.model else {}
        self.total = len(data.rationales)
        self.state = "idle" if self.model else "no reward model"
        self.error: str | None = None
        self.seconds = 0.0
        self._thread: threading.Thread | None = None

    def progress(self) -> dict:
        return {"state": self.state, "done": len(self.scores), "total": self.total, "error": self.error,
                "seconds": round(self.seconds, 1)}

    def start(self) -> None:
        if self.model is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run_logged, name="review-scorer", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception as err:  # noqa: BLE001 - the page shows it; serving goes on without scores
            log.exception("reward-model scoring failed")
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"

    def run(self) -> dict[int, float]:
        if self.model is None:
            return self.scores
        todo = [r for r in self.data.rationales if r["rid"] not in self.scores]
        if not todo:
            self.state = "done"
            return self.scores
        from ..rationales.rank import after_prompt
        from ..reward import load_reward_model, score_texts

        self.state = "loading the reward model"
        t0 = time.perf_counter()
        model, tokenizer = load_reward_model(self.model_dir, device=self.device)
        self.state = "scoring"
        path = scores_path(self.data.run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as sink:
            for start in range(0, len(todo), CHUNK):
                part = todo[start:start + CHUNK]
                prompts = [self.data.questions[r["question_id"]]["prompt"] for r in part]
                responses = [after_prompt(p, r["response"]) for p, r in zip(prompts, part)]
                values = score_texts(model, tokenizer, prompts, responses, batch_size=self.batch_size)
                for r, s in zip(part, values):
                    sink.write(json.dumps({"rid": r["rid"], "text_sha": r["text_sha"], "model": self.model,
                                           "score": s}) + "\n")
                sink.flush()
                self.scores.update({r["rid"]: s for r, s in zip(part, values)})
                self.seconds = time.perf_counter() - t0
        self.state = "done"
        return self.scores
