"""`sml review`: people judge a run's self-written rationales, and the automatic tiers and the reward model are
judged against them.

    run_review(ReviewConfig(run="runs/a"))                   # serves http://127.0.0.1:8765/ until Ctrl-C
    review_figures("runs/a")                                 # the agreement figures, no server
    export_labels("runs/a", "labels.jsonl")                  # every label with its rationale

Modules: `store` (the labels, RUN/review/labels.sqlite), `agreement` (kappa, AUROC, confusion: pure maths),
`source` (the run's rationales, ranked with its own rules), `scores` (reward-model scores, cached in
RUN/review/scores.jsonl, computed in the background), `app` (the page and its JSON endpoints), `config`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .agreement import auroc, cohen_kappa, figures, inter_annotator, tier_label
from .config import ReviewConfig
from .store import LABEL_TEXT, LABELS, LabelStore, labels_path

log = logging.getLogger(__name__)

__all__ = ["LABELS", "LABEL_TEXT", "LabelStore", "ReviewConfig", "ReviewServer", "auroc", "cohen_kappa",
           "export_labels", "figures", "has_labels", "inter_annotator", "review_figures", "run_review",
           "tier_label"]


def has_labels(run_dir: str | Path) -> bool:
    return labels_path(run_dir).is_file()


def _store_present(run_dir: Path) -> bool:
    from ..rationales import STORE_NAME

    return (run_dir / STORE_NAME).is_file()


def review_figures(run_dir: str | Path, scores: bool = False, score_batch_size: int = 8,
                   device: str = "cpu") -> dict:
    """The agreement figures of RUN's labels. With the rationale store, against today's tiers (labels of
    changed rationales left out, counted in n_stale); without it (a results folder), from the tiers each
    label recorded. `scores`: score the rationales with RUN/reward/model first (cached)."""
    from .scores import model_digest, read_scores, reward_model_dir

    run_dir = Path(run_dir)
    with LabelStore(run_dir, readonly=True) as store:
        labels = store.labels()
    if _store_present(run_dir):
        from .scores import Scorer
        from .source import load_review_data

        data = load_review_data(run_dir)
        scorer = Scorer(data, batch_size=score_batch_size, device=device)
        if scores:
            scorer.run()
        current, stale = data.current_labels(labels)
        out = figures(current, scorer.scores)
        out.update(n_stale=stale, tiers_from="the rationale store, ranked with the run's rules")
    else:
        folder = reward_model_dir(run_dir)
        texts = {r["rid"]: r["text_sha"] for r in labels}
        cached = read_scores(run_dir, model_digest(folder) if folder else None, texts)
        out = figures(labels, cached)
        out.update(n_stale=None, tiers_from="the tier each label recorded (no rationale store in the folder)")
    out["run"] = str(run_dir)
    return out


def export_labels(run_dir: str | Path, out: str | Path) -> dict:
    """Write every label to `out` (JSONL), with its rationale, question and gold when the store is there."""
    run_dir, out = Path(run_dir), Path(out)
    with LabelStore(run_dir, readonly=True) as store:
        labels = store.labels()
    data = None
    if _store_present(run_dir):
        from .source import load_review_data

        data = load_review_data(run_dir)
    rows = []
    for label in labels:
        row = {**label, "time": datetime.datetime.fromtimestamp(label["created"], datetime.timezone.utc)
               .isoformat(timespec="seconds")}
        if data is not None:
            current = data.is_current(label)
            row["stale"] = not current
            if current:
                r = data.by_rid[label["rid"]]
                q = data.questions[r["question_id"]]
                row.update(tier=r["tier"], outcome=r["outcome"], dataset=q["dataset"], question=q["question"],
                           gold=q["gold"], target=r["target"], answer=r["answer"], forced=r["forced"],
                           leak=r["leak"], status=r["status"], text=r["text"])
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out)
    return {"out": str(out), "n_labels": len(rows), "annotators": sorted({r["annotator"] for r in rows})}


class ReviewServer:
    """The page served by uvicorn in a background thread: `start()` binds (port 0: a free one) and returns
    once it answers; `url`; `stop()`. `run_review` serves in the foreground instead."""

    def __init__(self, config: ReviewConfig):
        from .app import ReviewState, make_app
        from .scores import Scorer
        from .source import load_review_data

        self.config = config
        data = load_review_data(config.run)
        self.scorer = Scorer(data, batch_size=config.score_batch_size, device=config.device)
        self.labels = LabelStore(config.run)
        self.state = ReviewState(config, data, self.labels, self.scorer)
        self.app = make_app(self.state)
        self._server = None
        self._thread = None
        self.sock = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as err:
            sock.close()
            raise RuntimeError(f"cannot listen on {self.config.host}:{self.config.port} ({err}); "
                               "choose another --port (0: any free port)") from None
        sock.listen(64)
        return sock

    def _uvicorn(self):
        import uvicorn

        return uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                             timeout_graceful_shutdown=2))

    def start(self, timeout: float = 30.0) -> "ReviewServer":
        self.sock = self._bind()
        self._server = self._uvicorn()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]},
                                        name="review-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        if self.config.scores:
            self.scorer.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
        if self.sock is not None:
            self.sock.close()
        self.labels.close()

    def serve_forever(self) -> None:
        if self.sock is None:
            self.sock = self._bind()
        if self.config.scores:
            self.scorer.start()
        try:
            self._uvicorn().run(sockets=[self.sock])
        finally:
            self.sock.close()
            self.labels.close()


def run_review(config: ReviewConfig) -> dict:
    """Export the labels (config.export) and/or return the figures (config.figures_only or export), or serve
    the page until interrupted."""
    if config.export or config.figures_only:
        result = {}
        if config.export:
            result["export"] = export_labels(config.run, config.export)
        result["figures"] = review_figures(config.run, scores=config.scores,
                                           score_batch_size=config.score_batch_size, device=config.device)
        return result
    server = ReviewServer(config)
    if not config.loopback:
        print(f"WARNING: listening on {config.host}, not the loopback address: anyone who can reach this "
              "machine on that port can read this run's rationales and labels, and label them (the page "
              "hands out the write token). Use it on a network you trust only.", file=sys.stderr)
    server.sock = server._bind()
    n = len(server.state.data.rationales)
    scores = server.scorer.progress()
    print(f"reviewing {n} rationales of {config.run} as {config.annotator!r}; labels go to "
          f"{labels_path(config.run)}")
    if scores["state"] == "no reward model":
        print("reward scores: no reward model in RUN/reward/model")
    else:
        print(f"reward scores: {scores['done']} of {scores['total']} cached"
              + ("; computing the rest in the background" if config.scores and scores["done"] < scores["total"]
                 else "" if scores["done"] >= scores["total"] else " (--scores computes the rest)"))
    print(f"open {server.url}  (Ctrl-C stops)", flush=True)
    server.serve_forever()
    return {"run": config.run, "labels": str(labels_path(config.run))}
