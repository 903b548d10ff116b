"""The rationale store: one SQLite file, `RUN/rationales.sqlite`.

Why SQLite (stdlib `sqlite3`) and not JSONL: generation runs for hours and must survive being killed
at any moment (`kill -9`, a lost machine) and resume exactly. SQLite gives that for free: each
prompt's samples are written in one committed transaction, so a kill leaves either all of them or
none (no torn last line to repair), and a UNIQUE key on (question id, kind, target answer, sample
index, settings fingerprint) makes a rerun's writes idempotent, so nothing is ever duplicated. WAL
mode lets `sml rationales stats/show/export` read while a generation writes, and synchronous=FULL
makes a commit survive an OS crash too. Question rows (text, gold, choices, the evaluation prompt)
live beside the rationales, so every later step works from the run folder alone. Human-readable
copies come from `export` (JSONL).

Rows record what the checks found (the stated answer, the forced answer, the leak flag); the tier is
NOT stored: ranking is a pure function of these rows (`rank.py`), so its rules can change without
regenerating.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable

STORE_NAME = "rationales.sqlite"
SCHEMA_VERSION = "1"
KINDS = ("free", "gold", "wrong")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (
    fingerprint TEXT PRIMARY KEY,
    settings TEXT NOT NULL,          -- JSON: every setting that decides what a sample is
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS questions (
    id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    question TEXT NOT NULL,
    gold TEXT NOT NULL,
    answer_type TEXT NOT NULL,
    choices TEXT NOT NULL,           -- JSON list of option texts
    prompt TEXT NOT NULL,            -- the evaluation (zero-shot, unhinted) prompt, rendered
    messages TEXT NOT NULL           -- JSON chat messages of that prompt (to re-render for another tokenizer)
);
CREATE TABLE IF NOT EXISTS rationales (
    rid INTEGER PRIMARY KEY,
    question_id TEXT NOT NULL REFERENCES questions(id),
    kind TEXT NOT NULL,              -- free | gold | wrong
    target TEXT NOT NULL,            -- the hinted answer ('' for free rationales)
    sample_index INTEGER NOT NULL,
    fingerprint TEXT NOT NULL REFERENCES settings(fingerprint),
    text TEXT NOT NULL,              -- the completion (a stop string it ended on removed)
    finish_reason TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    answer TEXT,                     -- the answer the rationale states (extract_answer), NULL if none
    forced_text TEXT,                -- greedy continuation after body + "The answer is"; NULL if not forced
    forced TEXT,                     -- the answer read from forced_text, NULL if none
    leak INTEGER NOT NULL,           -- a hinted rationale that says it was given the answer
    params TEXT NOT NULL,            -- JSON: sampling settings and counts of the call that made it
    created REAL NOT NULL,
    UNIQUE (question_id, kind, target, sample_index, fingerprint)
);
CREATE INDEX IF NOT EXISTS rationales_question ON rationales (question_id);
"""

_ROW_FIELDS = (
    "question_id",
    "kind",
    "target",
    "sample_index",
    "fingerprint",
    "text",
    "finish_reason",
    "n_tokens",
    "answer",
    "forced_text",
    "forced",
    "leak",
    "params",
)


def fingerprint(settings: dict) -> str:
    """A short stable id of the settings that decide what a sample is."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def store_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STORE_NAME


class RationaleStore:
    """A thin wrapper around the SQLite file. Open with `RationaleStore(run_dir)`; `readonly=True`
    refuses a folder without a store instead of creating one."""

    def __init__(self, run_dir: str | Path, readonly: bool = False):
        self.path = store_path(run_dir)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"no rationale store in {run_dir}: expected {self.path} "
                    "(run `sml rationales generate --run-dir DIR` first)"
                )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly, so what commits when is visible here.
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            version = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise ValueError(f"{self.path}: not a readable rationale store ({err})") from None
        if version is None or version[0] != SCHEMA_VERSION:
            self.conn.close()
            raise ValueError(
                f"{self.path}: store schema version {version and version[0]!r}, this code reads "
                f"{SCHEMA_VERSION!r}"
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing -----------------------------------------------------------------------------------
    def add_settings(self, fp: str, settings: dict) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO settings VALUES (?, ?, ?)",
            (fp, json.dumps(settings, sort_keys=True, default=str), time.time()),
        )

    def add_questions(self, rows: Iterable[dict]) -> None:
        """Insert question rows (one transaction). A question already stored with another gold or text
        is an error: the data changed under the run, and old rationales would be ranked against it."""
        rows = list(rows)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for r in rows:
                old = self.conn.execute(
                    "SELECT question, gold FROM questions WHERE id=?", (r["id"],)
                ).fetchone()
                if old is not None:
                    if (old["question"], old["gold"]) != (r["question"], r["gold"]):
                        raise ValueError(
                            f"{self.path}: question {r['id']!r} is stored with another text or gold "
                            f"(stored gold {old['gold']!r}, now {r['gold']!r}); the data changed: "
                            "use a new run folder"
                        )
                    continue
                self.conn.execute(
                    "INSERT INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r["id"],
                        r["dataset"],
                        r["split"],
                        r["question"],
                        r["gold"],
                        r["answer_type"],
                        json.dumps(list(r["choices"])),
                        r["prompt"],
                        json.dumps(r["messages"]),
                    ),
                )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def add_group(self, rows: list[dict]) -> int:
        """Write one prompt's samples in one transaction; rows already stored are left as they are.
        Returns the number of new rows."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            before = self.conn.total_changes
            self.conn.executemany(
                f"INSERT OR IGNORE INTO rationales ({', '.join(_ROW_FIELDS)}, created) "
                f"VALUES ({', '.join('?' * (len(_ROW_FIELDS) + 1))})",
                [tuple(_db_value(r[k]) for k in _ROW_FIELDS) + (now,) for r in rows],
            )
            added = self.conn.total_changes - before
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return added

    # --- reading -----------------------------------------------------------------------------------
    def settings(self) -> dict[str, dict]:
        return {
            r["fingerprint"]: json.loads(r["settings"])
            for r in self.conn.execute("SELECT * FROM settings ORDER BY created")
        }

    def fingerprints_in_use(self) -> dict[str, int]:
        return {
            r[0]: r[1]
            for r in self.conn.execute("SELECT fingerprint, COUNT(*) FROM rationales GROUP BY fingerprint")
        }

    def questions(self) -> dict[str, dict]:
        """Question rows by id, in insertion order."""
        out = {}
        for r in self.conn.execute("SELECT * FROM questions ORDER BY rowid"):
            row = dict(r)
            row["choices"] = tuple(json.loads(row["choices"]))
            row["messages"] = json.loads(row["messages"])
            out[row["id"]] = row
        return out

    def rationales(self, question_id: str | None = None, fingerprint: str | None = None) -> list[dict]:
        """Rationale rows in a stable order (question insertion order, then kind, target, sample index)."""
        sql = (
            "SELECT r.* FROM rationales r JOIN questions q ON q.id = r.question_id"
            " WHERE (? IS NULL OR r.question_id = ?) AND (? IS NULL OR r.fingerprint = ?)"
            " ORDER BY q.rowid, CASE r.kind WHEN 'free' THEN 0 WHEN 'gold' THEN 1 ELSE 2 END,"
            " r.target, r.sample_index, r.fingerprint"
        )
        rows = []
        for r in self.conn.execute(sql, (question_id, question_id, fingerprint, fingerprint)):
            row = dict(r)
            row["leak"] = bool(row["leak"])
            row["params"] = json.loads(row["params"])
            rows.append(row)
        return rows

    def sample_indices(self, fp: str, question_ids: list[str], kind: str) -> dict[tuple[str, str], set[int]]:
        """(question id, target) -> sample indices stored for `kind` under fingerprint `fp`."""
        out: dict[tuple[str, str], set[int]] = {}
        marks = ", ".join("?" * len(question_ids))
        for r in self.conn.execute(
            f"SELECT question_id, target, sample_index FROM rationales WHERE fingerprint=? AND kind=? "
            f"AND question_id IN ({marks})",
            (fp, kind, *question_ids),
        ):
            out.setdefault((r[0], r[1]), set()).add(r[2])
        return out

    def free_answers(self, fp: str, question_id: str) -> list[str | None]:
        """Stated answers of a question's free rationales under `fp`, in sample order."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT answer FROM rationales WHERE fingerprint=? AND question_id=? AND kind='free' "
                "ORDER BY sample_index",
                (fp, question_id),
            )
        ]


def _db_value(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    return value
