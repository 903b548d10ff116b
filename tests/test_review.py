"""`sml review`: the label store, the agreement maths against hand-computed figures, the page (escaping,
token, unknown ids, filters, paging), the figures without a server, export, report and reward scores."""

from __future__ import annotations

import json
import random
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from selfmotivated.rationales import RationaleStore
from selfmotivated.review import (
    LabelStore, ReviewConfig, ReviewServer, auroc, cohen_kappa, figures, review_figures, tier_label,
)
from selfmotivated.review.store import labels_path, text_sha

SCRIPT = "<script>window.__pwned = 1; alert('pwned')</script> I add <b>bold</b> & \"quotes\". The answer is yes."


def _q(qid, gold, answer_type, dataset, question):
    return {"id": qid, "dataset": dataset, "split": "train", "question": question, "gold": gold,
            "answer_type": answer_type, "choices": (), "prompt": f"Q: {question}\nA:",
            "messages": [{"role": "user", "content": question}]}


def _r(qid, kind, index, text, answer, forced, target=""):
    return {"question_id": qid, "kind": kind, "target": target, "sample_index": index, "fingerprint": "fp",
            "text": text, "finish_reason": "eos", "n_tokens": 9, "answer": answer, "forced_text": f" {forced}.",
            "forced": forced, "leak": False, "params": {}}


def make_run(run_dir: Path, n_extra_questions: int = 0) -> Path:
    """A run folder with a rationale store written by hand (no model): two questions whose rationales land
    in every tier under the default rules, one holding HTML and a script."""
    with RationaleStore(run_dir) as store:
        store.add_settings("fp", {"model": "hand-written"})
        qs = [_q("coin-1", "yes", "yes_no", "toy_coin", "A coin is heads up. Nobody flips it. Still heads up?"),
              _q("sum-1", "12", "number", "toy_sum", "Ann has 5 apples and gets 7 more. How many?")]
        qs += [_q(f"sum-{i}", str(i), "number", "toy_sum", f"What is {i} + 0?") for i in range(2, 2 + n_extra_questions)]
        store.add_questions(qs)
        store.add_group([
            _r("coin-1", "free", 0, "Nobody flipped it, so it stays heads up. The answer is yes.", "yes", "yes"),
            _r("coin-1", "free", 1, SCRIPT, "yes", "no"),  # forced to another answer: unsupported, tier 2
            _r("coin-1", "gold", 0, "It was not flipped. The answer is yes.", "yes", "yes", target="yes"),
            _r("coin-1", "wrong", 0, "Coins flip themselves. The answer is no.", "no", "no", target="no"),
            _r("coin-1", "free", 2, "Let me think about the coin and the coin and the coin", None, None),
        ])
        store.add_group([
            _r("sum-1", "free", 0, "5 + 7 = 12. The answer is 12.", "12", "12"),
            _r("sum-1", "free", 1, "5 + 2 = 7. The answer is 7.", "7", "7"),
            _r("sum-1", "wrong", 0, "5 + 7 is 12, not 7. The answer is 12.", "12", "12", target="7"),
        ])
        for q in qs[2:]:
            store.add_group([_r(q["id"], "free", 0, f"{q['gold']} + 0 = {q['gold']}. The answer is {q['gold']}.",
                                q["gold"], q["gold"])])
    return run_dir


def rids(run_dir: Path) -> dict[str, int]:
    """rid by (question, kind, sample index) as 'coin-1/free/1'."""
    con = sqlite3.connect(run_dir / "rationales.sqlite")
    try:
        return {f"{q}/{k}/{i}": rid for rid, q, k, i in
                con.execute("SELECT rid, question_id, kind, sample_index FROM rationales")}
    finally:
        con.close()


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


# --------------------------------------------------------------------------------------------------
# the label store

def _rationale(rid=1, text="why", tier=3, kind="free"):
    return {"rid": rid, "question_id": "q", "text": text, "kind": kind, "tier": tier, "outcome": "correct",
            "top_tier": 3, "bottom_tier": 1}


def test_label_store_persists_each_label_at_once_for_several_annotators(tmp_path):
    store = LabelStore(tmp_path)
    store.set_label(_rationale(1), "alice", "sound", "clear steps")
    # Committed per label: another connection sees it while the first is still open.
    other = sqlite3.connect(labels_path(tmp_path))
    assert other.execute("SELECT rid, annotator, label, comment FROM labels").fetchall() == [
        (1, "alice", "sound", "clear steps")]
    other.close()
    store.set_label(_rationale(1), "bob", "wrong")
    store.set_label(_rationale(2, text="other"), "alice", "right_unsound")
    store.set_label(_rationale(1), "alice", "right_unsound", "on second reading")  # replaces alice's label
    store.close()

    with LabelStore(tmp_path, readonly=True) as again:
        by = {(r["rid"], r["annotator"]): r for r in again.labels()}
        assert again.annotators() == ["alice", "bob"]
    assert len(by) == 3
    assert by[(1, "alice")]["label"] == "right_unsound" and by[(1, "alice")]["comment"] == "on second reading"
    assert by[(1, "bob")]["label"] == "wrong"
    assert by[(2, "alice")]["text_sha"] == text_sha("other") and by[(2, "alice")]["tier"] == 3
    assert by[(1, "bob")]["created"] > 0

    with LabelStore(tmp_path) as store:
        assert store.delete_label(1, "bob") is True
        assert store.delete_label(1, "bob") is False
        assert [r["annotator"] for r in store.labels()] == ["alice", "alice"]


def test_label_store_refuses_bad_labels_and_names(tmp_path):
    with LabelStore(tmp_path) as store:
        with pytest.raises(ValueError, match="unknown label 'great'"):
            store.set_label(_rationale(), "alice", "great")
        with pytest.raises(ValueError, match="annotator name is empty"):
            store.set_label(_rationale(), "  ", "sound")
        with pytest.raises(ValueError, match="at most 2000"):
            store.set_label(_rationale(), "alice", "sound", "x" * 2001)
        assert store.labels() == []
    with pytest.raises(FileNotFoundError, match="no labels"):
        LabelStore(tmp_path / "elsewhere", readonly=True)


# --------------------------------------------------------------------------------------------------
# agreement maths

def test_cohen_kappa_matches_hand_computed_values():
    # Two raters, 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    # Three classes, 10 items: p_o = 8/10; marginals (5, 2, 3) and (5, 3, 2): p_e = (25 + 6 + 6) / 100 = 0.37;
    # kappa = (0.8 - 0.37) / 0.63.
    pairs = [("s", "s")] * 4 + [("s", "u")] + [("u", "u")] * 2 + [("w", "w")] * 2 + [("w", "s")]
    assert cohen_kappa(pairs) == pytest.approx(0.43 / 0.63)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([("a", "a")] * 3) is None  # one category throughout: chance agreement is 1
    assert cohen_kappa([]) is None


def test_auroc_matches_hand_computed_values_and_pair_counting():
    # Positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    # A tie counts one half: positives {0.9, 0.5}, negatives {0.5, 0.1}: (1 + 1 + 0.5 + 1) / 4.
    assert auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert auroc([1.0, 1.0], [True, False]) == pytest.approx(0.5)
    assert auroc([3.0, 1.0], [False, True]) == pytest.approx(0.0)
    assert auroc([1.0, 2.0], [True, True]) is None
    rng = random.Random(0)
    for _ in range(20):  # the rank formula against counting every pair
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(30)]
        labels = [rng.random() < 0.4 for _ in range(30)]
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        if pos and neg:
            brute = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
            assert auroc(scores, labels) == pytest.approx(brute)


def test_tier_label_mapping():
    assert [tier_label(t, 3, 1) for t in (3, 2, 1, None)] == ["sound", "right_unsound", "wrong", None]
    assert tier_label(4, 4, 0) == "sound" and tier_label(1, 4, 0) == "right_unsound"


def _label(rid, annotator, label, tier, kind="free", score=None, outcome="o"):
    return {"rid": rid, "annotator": annotator, "label": label, "tier": tier, "kind": kind, "top_tier": 3,
            "bottom_tier": 1, "score": score, "outcome": outcome}


def test_figures_confusion_kappa_reward_auroc_and_inter_annotator():
    labels = [
        _label(1, "a", "sound", 3, score=2.0),
        _label(2, "a", "right_unsound", 3, score=1.0),
        _label(3, "a", "right_unsound", 2, kind="gold", score=0.5, outcome="inconsistent"),
        _label(4, "a", "wrong", 1, kind="wrong", score=-1.0),
        _label(5, "a", "sound", 1, score=1.5),
        _label(6, "a", "wrong", None, kind="wrong"),  # left out of the rank: own row, no kappa
        _label(1, "b", "sound", 3),
        _label(2, "b", "wrong", 3),
        _label(4, "b", "wrong", 1, kind="wrong"),
    ]
    fig = figures(labels, scores={2: 0.0})  # a cached score wins over the label's snapshot
    assert fig["n_labels"] == 9 and fig["n_rationales"] == 6 and fig["annotators"] == {"a": 6, "b": 3}
    assert fig["confusion"]["rows"] == ["3", "2", "1", "none"]
    assert fig["confusion"]["counts"] == [[2, 1, 1], [0, 1, 0], [1, 0, 2], [0, 0, 1]]
    # tier's claim vs label over the 8 ranked labels: (s,s) (s,u) (u,u) (w,w) (w,s) (s,s) (s,w) (w,w)
    claims = [("sound", "sound"), ("sound", "right_unsound"), ("right_unsound", "right_unsound"),
              ("wrong", "wrong"), ("wrong", "sound"), ("sound", "sound"), ("sound", "wrong"), ("wrong", "wrong")]
    assert fig["tier_vs_label"]["n"] == 8
    assert fig["tier_vs_label"]["agreement"] == pytest.approx(5 / 8)
    assert fig["tier_vs_label"]["kappa"] == pytest.approx(cohen_kappa(claims))
    # by hand: p_o = 5/8; claims (s 4, u 1, w 3), labels (s 3, u 2, w 3): p_e = (12 + 2 + 9) / 64
    assert fig["tier_vs_label"]["kappa"] == pytest.approx((5 / 8 - 23 / 64) / (1 - 23 / 64))
    top = fig["top_tier_vs_sound"]
    assert (top["n_top_tier"], top["n_sound"]) == (4, 3)
    assert top["precision"] == pytest.approx(2 / 4) and top["recall"] == pytest.approx(2 / 3)
    # reward: a's rids 1-5 (rid 2's score from the cache): 2.0 s, 0.0 u, 0.5 u, -1.0 w, 1.5 s, and b's label of
    # rid 2 (cached 0.0, wrong); sound {2.0, 1.5} beat all four others: AUROC 1.0
    assert fig["reward"] == {"n": 6, "n_sound": 2, "auroc": pytest.approx(1.0)}
    assert figures(labels, scores={2: 1.75})["reward"]["auroc"] == pytest.approx(6 / 8)  # 1.75 > 1.5 twice
    ia = fig["inter_annotator"]
    assert ia["n_rationales"] == 3  # rids 1, 2, 4
    assert ia["pairs"][0]["annotators"] == ["a", "b"] and ia["pairs"][0]["n"] == 3
    assert ia["pairs"][0]["agreement"] == pytest.approx(2 / 3)
    assert ia["pooled"]["kappa"] == pytest.approx(
        cohen_kappa([("sound", "sound"), ("right_unsound", "wrong"), ("wrong", "wrong")]))
    assert set(fig["by_kind"]) == {"free", "gold", "wrong"}
    # right answer (tier above the bottom vs not 'wrong'): (T,T) x4, (F,F) x2, (F,T), (T,F): p_o = 6/8;
    # marginals (5 T, 3 F) on both sides: p_e = (25 + 9) / 64; kappa = (48 - 34) / (64 - 34)
    assert fig["right_answer"]["agreement"] == pytest.approx(6 / 8)
    assert fig["right_answer"]["kappa"] == pytest.approx(14 / 30)
    assert fig["by_outcome"] == {"free/o": {"sound": 3, "right_unsound": 1, "wrong": 1},
                                 "gold/inconsistent": {"sound": 0, "right_unsound": 1, "wrong": 0},
                                 "wrong/o": {"sound": 0, "right_unsound": 0, "wrong": 3}}


# --------------------------------------------------------------------------------------------------
# the page

@pytest.fixture
def server(run):
    srv = ReviewServer(ReviewConfig(run=str(run), port=0, annotator="alice", page_size=1)).start()
    yield srv
    srv.stop()


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _post(url: str, body, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Review-Token"] = token
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST"), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _token(page: str) -> str:
    start = page.index('name="review-token" content="') + len('name="review-token" content="')
    return page[start:page.index('"', start)]


def test_page_shows_model_text_escaped_with_a_nonce_policy(server, run):
    status, page = _get(server.url + "?tier=2")
    assert status == 200
    assert "&lt;script&gt;window.__pwned = 1; alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quotes&quot;" in page
    assert "<script>alert" not in page and "<b>bold" not in page
    # Only our own script tag, carrying the nonce the policy names.
    assert page.count("<script") == 1
    with urllib.request.urlopen(server.url, timeout=10) as r:
        policy = r.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in policy and "default-src 'none'" in policy
    # What people type is escaped too: an annotator name and a comment with markup.
    token = _token(page)
    rid = rids(run)["coin-1/free/0"]
    code, _ = _post(server.url + "api/label", {"rid": rid, "label": "sound", "annotator": "<i>eve</i>",
                                               "comment": "<img src=x onerror=alert(1)>"}, token)
    assert code == 200
    _, page = _get(server.url + "?annotator=alice&tier=3&dataset=toy_coin")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;i&gt;eve&lt;/i&gt;" in page
    assert "<img" not in page and "<i>eve" not in page


def test_writes_need_the_page_token(server, run):
    _, page = _get(server.url)
    token = _token(page)
    rid = rids(run)["coin-1/free/0"]
    body = {"rid": rid, "label": "sound", "annotator": "alice"}
    for sent in (None, "", "not-the-token", token[:-1]):
        code, answer = _post(server.url + "api/label", body, sent)
        assert code == 403 and "X-Review-Token" in answer["error"]
    code, _ = _post(server.url + "api/unlabel", {"rid": rid, "annotator": "alice"}, "wrong")
    assert code == 403
    with LabelStore(run, readonly=True) as store:
        assert store.labels() == []
    code, answer = _post(server.url + "api/label", body, token)
    assert code == 200 and answer["ok"] and "1 labels of 1 rationales" in answer["panel"]
    with LabelStore(run, readonly=True) as store:
        assert [(r["rid"], r["label"]) for r in store.labels()] == [(rid, "sound")]
    # A GET cannot write; another Host header (DNS rebinding) is refused.
    assert _get(server.url + "api/label")[0] == 405
    assert _get(server.url, {"Host": "attacker.example"})[0] == 400


def test_unknown_ids_and_bad_bodies_are_refused_with_a_message(server, run):
    _, page = _get(server.url)
    token = _token(page)
    code, answer = _post(server.url + "api/label", {"rid": 987654, "label": "sound", "annotator": "a"}, token)
    assert code == 404 and "unknown rationale id 987654" in answer["error"]
    code, answer = _post(server.url + "api/label", {"rid": "1", "label": "sound", "annotator": "a"}, token)
    assert code == 400 and "integer rationale id" in answer["error"]
    code, answer = _post(server.url + "api/label", {"rid": 1, "label": "meh", "annotator": "a"}, token)
    assert code == 400 and "unknown label 'meh'" in answer["error"]
    code, answer = _post(server.url + "api/label", b"{not json", token)
    assert code == 400 and "JSON object" in answer["error"]
    code, answer = _post(server.url + "api/unlabel", {"rid": 987654, "annotator": "a"}, token)
    assert code == 404
    with LabelStore(run, readonly=True) as store:
        assert store.labels() == []


def test_filters_paging_and_labels_on_reload(server, run):
    ids = rids(run)
    _, page = _get(server.url)
    token = _token(page)
    assert "page 1 of 2" in page and "coin-1" in page and "sum-1" not in page  # one question a page
    _, page2 = _get(server.url + "?page=2")
    assert "sum-1" in page2 and "gold answer: <b class='gold'>12</b>" in page2
    _, tier1 = _get(server.url + "?tier=1&kind=wrong")
    assert f"data-rid='{ids['coin-1/wrong/0']}'" in tier1 and f"data-rid='{ids['coin-1/free/0']}'" not in tier1
    _, unranked = _get(server.url + "?tier=none")
    assert f"data-rid='{ids['sum-1/wrong/0']}'" in unranked and "reaches_gold" in unranked
    _, by_dataset = _get(server.url + "?dataset=toy_sum")
    assert "sum-1" in by_dataset and "coin-1" not in by_dataset
    # alice calls the top-tier free rationale unsound and agrees on the wrong-hinted one
    _post(server.url + "api/label", {"rid": ids["coin-1/free/0"], "label": "wrong", "annotator": "alice",
                                     "comment": "guesses"}, token)
    _post(server.url + "api/label", {"rid": ids["coin-1/wrong/0"], "label": "wrong", "annotator": "alice"}, token)
    _, disagree = _get(server.url + "?show=disagree")
    assert f"data-rid='{ids['coin-1/free/0']}'" in disagree and f"data-rid='{ids['coin-1/wrong/0']}'" not in disagree
    _, agree = _get(server.url + "?show=agree")
    assert f"data-rid='{ids['coin-1/wrong/0']}'" in agree and f"data-rid='{ids['coin-1/free/0']}'" not in agree
    _, unlabelled = _get(server.url + "?show=unlabelled")
    assert f"data-rid='{ids['coin-1/free/0']}'" not in unlabelled and f"data-rid='{ids['coin-1/free/1']}'" in unlabelled
    # on reload the label, its comment and the figures are there; another annotator sees them as others'
    _, page = _get(server.url + "?tier=3&dataset=toy_coin")
    assert f"data-rid='{ids['coin-1/free/0']}' data-label='wrong'" in page and "value='guesses'" in page
    assert "2 labels of 2 rationales" in page and "2 of 8 rationales labelled by alice" in page
    _, as_bob = _get(server.url + "?tier=3&dataset=toy_coin&annotator=bob")
    assert f"data-rid='{ids['coin-1/free/0']}' data-label=''" in as_bob and "alice: wrong (guesses)" in as_bob
    _post(server.url + "api/label", {"rid": ids["coin-1/free/0"], "label": "sound", "annotator": "bob"}, token)
    _, conflict = _get(server.url + "?show=conflict")
    assert f"data-rid='{ids['coin-1/free/0']}'" in conflict and f"data-rid='{ids['coin-1/wrong/0']}'" not in conflict
    code, answer = _post(server.url + "api/unlabel", {"rid": ids["coin-1/free/0"], "annotator": "bob"}, token)
    assert code == 200 and answer["result"] is True


def test_the_server_listens_on_loopback_by_default_and_warns_for_another_host(run, capsys, monkeypatch):
    assert ReviewConfig(run=str(run)).host == "127.0.0.1"
    import selfmotivated.review as review

    monkeypatch.setattr(review.ReviewServer, "serve_forever", lambda self: self.labels.close())
    review.run_review(ReviewConfig(run=str(run), host="0.0.0.0", port=0))
    assert "WARNING: listening on 0.0.0.0" in capsys.readouterr().err
    review.run_review(ReviewConfig(run=str(run), port=0))
    assert "WARNING" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# figures without a server: CLI --json, --export, the report, a changed store

def _label_some(run: Path) -> dict:
    from selfmotivated.review.source import load_review_data

    data = load_review_data(run)
    ids = rids(run)
    with LabelStore(run) as store:
        for key, label, who in [("coin-1/free/0", "sound", "r1"), ("coin-1/free/1", "right_unsound", "r1"),
                                ("coin-1/wrong/0", "wrong", "r1"), ("sum-1/free/0", "sound", "r1"),
                                ("sum-1/free/1", "wrong", "r1"), ("coin-1/free/0", "sound", "r2")]:
            store.set_label(data.context(ids[key]), who, label)
    return ids


def test_cli_json_export_and_report(run, tmp_path, capsys):
    from selfmotivated.cli import main

    _label_some(run)
    assert main(["review", str(run), "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    # every label agrees with its tier: tiers 3 -> sound, 2 -> unsound, 1 -> wrong
    assert fig["n_labels"] == 6 and fig["tier_vs_label"]["agreement"] == pytest.approx(1.0)
    assert fig["tier_vs_label"]["kappa"] == pytest.approx(1.0)
    assert fig["inter_annotator"]["pairs"][0]["n"] == 1 and fig["n_stale"] == 0

    out = tmp_path / "labels.jsonl"
    assert main(["review", str(run), "--export", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["annotator"] for r in rows} == {"r1", "r2"}
    script_row = next(r for r in rows if r["label"] == "right_unsound")
    assert script_row["text"] == SCRIPT and script_row["gold"] == "yes" and script_row["tier"] == 2
    assert not script_row["stale"] and script_row["time"].endswith("+00:00")

    from selfmotivated.report import make_report

    paths = make_report([str(run)], plots=False)
    md = Path(paths["markdown"]).read_text()
    assert "## People's labels" in md and "6 labels of 5 rationales" in md
    assert "| tier 3 | 3 | 0 | 0 |" in md  # sound 3 (r1 twice, r2 once)
    assert "| free/unsupported | 0 | 1 | 0 |" in md  # the labels of each outcome the checks found

    # A results folder keeps the labels but not the store: the figures come from the labels' own tiers.
    bare = tmp_path / "results-copy"
    (bare / "review").mkdir(parents=True)
    (bare / "review" / "labels.sqlite").write_bytes(labels_path(run).read_bytes())
    fig2 = review_figures(bare)
    assert fig2["confusion"] == fig["confusion"] and fig2["n_stale"] is None


def test_labels_of_a_changed_rationale_are_left_out(run):
    ids = _label_some(run)
    con = sqlite3.connect(run / "rationales.sqlite")
    con.execute("UPDATE rationales SET text='rewritten' WHERE rid=?", (ids["sum-1/free/1"],))
    con.commit()
    con.close()
    fig = review_figures(run)
    assert fig["n_stale"] == 1 and fig["n_labels"] == 5


def test_no_labels_yet_is_a_clear_error(run):
    from selfmotivated.cli import main

    with pytest.raises(FileNotFoundError, match="no labels"):
        review_figures(run)
    assert main(["review", str(run), "--json"]) == 2


# --------------------------------------------------------------------------------------------------
# reward scores: computed once, cached, used for the AUROC

def test_reward_scores_are_cached_and_match_the_reward_model(run, tiny_dir):
    import torch

    from selfmotivated.rationales.rank import after_prompt
    from selfmotivated.reward import load_reward_model, load_scoring_backbone, score_texts
    from selfmotivated.review.scores import Scorer, scores_path
    from selfmotivated.review.source import load_review_data

    torch.manual_seed(0)
    model, tokenizer = load_scoring_backbone(tiny_dir)
    model.save_pretrained(run / "reward" / "model")
    tokenizer.save_pretrained(run / "reward" / "model")
    data = load_review_data(run)
    scorer = Scorer(data, batch_size=4)
    assert scorer.progress()["done"] == 0
    scores = scorer.run()
    assert set(scores) == set(data.by_rid) and scorer.progress()["state"] == "done"
    assert len(scores_path(run).read_text().splitlines()) == len(data.rationales)

    reward, tok = load_reward_model(run / "reward" / "model")
    rows = data.rationales[:3]
    prompts = [data.questions[r["question_id"]]["prompt"] for r in rows]
    direct = score_texts(reward, tok, prompts, [after_prompt(p, r["response"]) for p, r in zip(prompts, rows)])
    assert [scores[r["rid"]] for r in rows] == pytest.approx(direct, abs=1e-5)

    again = Scorer(data)  # a second start reads the cache and has nothing to do
    assert again.scores == pytest.approx(scores) and again.progress()["done"] == len(data.rationales)
    _label_some(run)
    fig = review_figures(run)
    assert fig["reward"]["n"] == 6 and fig["reward"]["auroc"] is not None
