"""People's labels of rationales: one SQLite file, `RUN/review/labels.sqlite`.

Each label is committed on its own (autocommit, WAL, synchronous=FULL), so a crash, a killed server or a
closed tab loses at most the label being written. One row per (rationale, annotator): labelling again
replaces that annotator's label, and several annotators may label the same rationale.

A label also keeps a snapshot of what the machine said about the rationale when the person labelled it
(kind, tier, outcome, the SHA-256 of its text, the reward score if known). Two reasons: the figures can
be computed from this file alone (a results folder keeps small files, not the rationale store), and a
label whose rationale id now points at another text (a regenerated store) is detected and left out
instead of being counted against the wrong rationale.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

LABELS_NAME = "labels.sqlite"
REVIEW_DIR = "review"
SCHEMA_VERSION = "1"
# The three judgements a person gives; the order is the order on the page and of keys 1, 2, 3.
LABELS = ("sound", "right_unsound", "wrong")
LABEL_TEXT = {
    "sound": "sound reasoning",
    "right_unsound": "right answer, unsound reasoning",
    "wrong": "wrong",
}
MAX_ANNOTATOR = 64
MAX_COMMENT = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    rid INTEGER NOT NULL,            -- rationales.rid of RUN/rationales.sqlite
    annotator TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('sound', 'right_unsound', 'wrong')),
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,           -- unix time of the latest change
    question_id TEXT NOT NULL,
    text_sha TEXT NOT NULL,          -- sha256 of the rationale text when labelled
    kind TEXT NOT NULL,              -- free | gold | wrong
    tier INTEGER,                    -- automatic tier when labelled (NULL: left out of the rank)
    outcome TEXT NOT NULL,
    top_tier INTEGER,                -- the highest tier of the rank rules then
    bottom_tier INTEGER,             -- and the lowest
    score REAL,                      -- reward-model score when labelled, if it was known
    PRIMARY KEY (rid, annotator)
);
"""


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def labels_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / REVIEW_DIR / LABELS_NAME


def check_annotator(name) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise ValueError("annotator name is empty: give one (--annotator NAME)")
    if len(name) > MAX_ANNOTATOR or any(ord(c) < 32 for c in name):
        raise ValueError(f"annotator name must be at most {MAX_ANNOTATOR} printable characters, got {name!r}")
    return name


class LabelStore:
    """Labels of one run. `LabelStore(run_dir)` creates RUN/review/labels.sqlite; `readonly=True` opens an
    existing file only. Safe to share between threads (one connection behind a lock)."""

    def __init__(self, run_dir: str | Path, readonly: bool = False):
        self.path = labels_path(run_dir)
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"no labels in {run_dir}: expected {self.path} (label with `sml review RUN`)")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # The web server answers from a thread pool: one connection, serialised by the lock.
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        try:
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(_SCHEMA)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            version = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise ValueError(f"{self.path}: not a readable label store ({err})") from None
        if version is None or version[0] != SCHEMA_VERSION:
            self.conn.close()
            raise ValueError(f"{self.path}: label store schema {version and version[0]!r}, this code reads "
                             f"{SCHEMA_VERSION!r}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_label(self, rationale: dict, annotator: str, label: str, comment: str = "",
                  score: float | None = None) -> dict:
        """Store (or replace) `annotator`'s label of `rationale` (a ranked row: rid, question_id, text, kind,
        tier, outcome, top_tier, bottom_tier). Committed before it returns."""
        annotator = check_annotator(annotator)
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; labels: {', '.join(LABELS)}")
        comment = comment if isinstance(comment, str) else ""
        if len(comment) > MAX_COMMENT:
            raise ValueError(f"comment is {len(comment)} characters, at most {MAX_COMMENT}")
        row = {
            "rid": int(rationale["rid"]), "annotator": annotator, "label": label, "comment": comment,
            "created": time.time(), "question_id": rationale["question_id"],
            "text_sha": text_sha(rationale["text"]), "kind": rationale["kind"], "tier": rationale["tier"],
            "outcome": rationale["outcome"], "top_tier": rationale.get("top_tier"),
            "bottom_tier": rationale.get("bottom_tier"), "score": score,
        }
        keys = list(row)
        with self._lock:
            self.conn.execute(
                f"INSERT OR REPLACE INTO labels ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                [row[k] for k in keys])
        return row

    def delete_label(self, rid: int, annotator: str) -> bool:
        """Remove `annotator`'s label of rationale `rid`; False if there was none."""
        with self._lock:
            cur = self.conn.execute("DELETE FROM labels WHERE rid=? AND annotator=?", (int(rid), annotator))
        return cur.rowcount > 0

    def labels(self, annotator: str | None = None) -> list[dict]:
        """Every label (or one annotator's), oldest change first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT * FROM labels WHERE (? IS NULL OR annotator = ?) ORDER BY created, rid, annotator",
                (annotator, annotator)).fetchall()
        return [dict(r) for r in rows]

    def annotators(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT DISTINCT annotator FROM labels ORDER BY annotator")]
