"""The review page: a Starlette app over one run folder.

Safety, in order of what could go wrong:
- Everything a model wrote (rationales, forced continuations, answers) and everything a person typed
  (annotator names, comments) reaches the page through `html.escape`; the page builds no HTML from data
  in JavaScript (it only sets textContent, and the agreement panel comes escaped from the server).
  A Content-Security-Policy with a per-start nonce stops any script that is not ours even if an escape
  were missed.
- Writes are POSTs with the token issued with the page in an X-Review-Token header: another site cannot
  read the page (so not the token), and cannot send that header without the browser asking this server
  first (CORS preflight, which it does not answer). A missing or wrong token is a 403.
- A Host header check (DNS rebinding: a site whose name resolves to 127.0.0.1 would otherwise be this
  origin) accepts only the address the server was started on.
- Labels for a rationale id the run does not hold are refused (404), bad bodies with a message (400).
"""

from __future__ import annotations

import html
import json
import math
import secrets
from urllib.parse import urlencode

from .agreement import figures as compute_figures, tier_label
from .config import LOOPBACK_HOSTS, ReviewConfig
from .source import KIND_TEXT, ReviewData
from .store import LABEL_TEXT, LABELS, LabelStore, check_annotator

TOKEN_HEADER = "X-Review-Token"
SHOW = {"": "all", "unlabelled": "not labelled by me", "labelled": "labelled by me",
        "disagree": "my label differs from the tier", "agree": "my label matches the tier",
        "conflict": "annotators differ"}


def e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class ReviewState:
    """What the app serves: the run's rationales, the label store, the scorer, the token."""

    def __init__(self, config: ReviewConfig, data: ReviewData, labels: LabelStore, scorer=None,
                 token: str | None = None):
        self.config, self.data, self.labels, self.scorer = config, data, labels, scorer
        self.token = token or secrets.token_urlsafe(32)

    # --- reading -------------------------------------------------------------------------------------
    def scores(self) -> dict[int, float]:
        return self.scorer.scores if self.scorer is not None else {}

    def figures(self) -> dict:
        labels, stale = self.data.current_labels(self.labels.labels())
        out = compute_figures(labels, self.scores())
        out["n_stale"] = stale
        return out

    def select(self, query: dict) -> dict:
        """The rationales a page shows: filters applied, grouped by question, one page of questions."""
        annotator = query["annotator"]
        mine = {r["rid"]: r for r in self.labels.labels(annotator)}
        everyone: dict[int, set] = {}
        if query["show"] == "conflict":
            for r in self.labels.labels():
                everyone.setdefault(r["rid"], set()).add(r["label"])
        top, bottom = self.data.top_tier, self.data.bottom_tier

        def keep(r: dict) -> bool:
            if query["tier"] and str(r["tier"]).lower() != query["tier"]:
                return False
            if query["kind"] and r["kind"] != query["kind"]:
                return False
            if query["dataset"] and r["dataset"] != query["dataset"]:
                return False
            show, label = query["show"], mine.get(r["rid"])
            if show == "unlabelled":
                return label is None
            if show == "labelled":
                return label is not None
            if show in ("disagree", "agree"):
                claimed = tier_label(r["tier"], top, bottom)
                if label is None or claimed is None:
                    return False
                return (claimed != label["label"]) == (show == "disagree")
            if show == "conflict":
                return len(everyone.get(r["rid"], ())) > 1
            return True

        by_question: dict[str, list] = {}
        for r in self.data.rationales:
            if keep(r):
                by_question.setdefault(r["question_id"], []).append(r)
        qids = list(by_question)
        size = self.config.page_size
        n_pages = max(1, math.ceil(len(qids) / size))
        page = min(query["page"], n_pages)
        shown = qids[(page - 1) * size: page * size]
        others: dict[int, list] = {}
        shown_rids = {r["rid"] for q in shown for r in by_question[q]}
        for r in self.labels.labels():
            if r["rid"] in shown_rids and r["annotator"] != annotator:
                others.setdefault(r["rid"], []).append(r)
        return {"questions": [(q, by_question[q]) for q in shown], "page": page, "n_pages": n_pages,
                "n_questions": len(qids), "n_rationales": sum(len(v) for v in by_question.values()),
                "mine": mine, "others": others}

    def progress_text(self, annotator: str) -> str:
        mine = {r["rid"] for r in self.labels.labels(annotator) if self.data.is_current(r)}
        return (f"{len(mine)} of {len(self.data.rationales)} rationales labelled by {annotator}; "
                f"{len(self.labels.labels())} labels in all")

    # --- writing -------------------------------------------------------------------------------------
    def rationale_of(self, body: dict) -> dict:
        """The rationale a request names, or a clear error (ValueError: 400, LookupError: 404)."""
        rid = body.get("rid")
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise ValueError(f"'rid' must be an integer rationale id, got {rid!r}")
        if rid not in self.data.by_rid:
            raise LookupError(f"unknown rationale id {rid}: {self.data.run_dir}/rationales.sqlite holds no such "
                              f"rationale")
        return self.data.context(rid)

    def set_label(self, body: dict) -> dict:
        rationale = self.rationale_of(body)
        score = self.scores().get(rationale["rid"])
        return self.labels.set_label(rationale, body.get("annotator"), body.get("label"),
                                     body.get("comment") or "", score)

    def delete_label(self, body: dict) -> bool:
        rationale = self.rationale_of(body)
        return self.labels.delete_label(rationale["rid"], check_annotator(body.get("annotator")))


# --- HTML --------------------------------------------------------------------------------------------
def parse_query(params, default_annotator: str) -> dict:
    """Filters from the query string; unknown values mean 'any' (a stale bookmark still opens a page)."""
    def pick(name: str, allowed) -> str:
        value = params.get(name, "")
        return value if value in allowed else ""

    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        page = 1
    annotator = (params.get("annotator") or "").strip() or default_annotator
    try:
        annotator = check_annotator(annotator)
    except ValueError:
        annotator = default_annotator
    return {"annotator": annotator, "page": page, "tier": params.get("tier", "").lower(),
            "kind": pick("kind", KIND_TEXT), "dataset": params.get("dataset", ""), "show": pick("show", SHOW)}


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_panel(fig: dict, score_progress: dict | None = None) -> str:
    """The agreement panel (escaped HTML): confusion table, kappas, AUROCs, inter-annotator agreement."""
    if not fig["n_labels"]:
        out = ["<p>No labels yet: the figures appear with the first label.</p>"]
    else:
        conf = fig["confusion"]
        head = "".join(f"<th>{e(LABEL_TEXT[c])}</th>" for c in conf["cols"])
        rows = "".join(
            f"<tr><th>{'not ranked' if r == 'none' else f'tier {e(r)}'}</th>" + "".join(f"<td>{n}</td>" for n in counts) + "</tr>"
            for r, counts in zip(conf["rows"], conf["counts"]))
        tv, top, rw = fig["tier_vs_label"], fig["top_tier_vs_sound"], fig["reward"]
        who = ", ".join(f"{e(a)} ({n})" for a, n in fig["annotators"].items())
        out = [
            f"<p>{fig['n_labels']} labels of {fig['n_rationales']} rationales by {who}.</p>",
            f"<table class='conf'><tr><th>tier \\ people</th>{head}</tr>{rows}</table>",
            "<ul>",
            f"<li>tier vs label (top tier = sound, bottom = wrong, between = right but unsound): agreement "
            f"<b id='fig-agreement'>{_pct(tv['agreement'])}</b>, Cohen's kappa <b id='fig-kappa'>"
            f"{_fmt(tv['kappa'])}</b> (n={tv['n']})</li>",
            f"<li>right answer (tier above the bottom vs sound or right-but-unsound): agreement "
            f"{_pct(fig['right_answer']['agreement'])}, kappa {_fmt(fig['right_answer']['kappa'])}</li>",
            f"<li>top tier vs sound: kappa {_fmt(top['kappa'])}; of top-tier rationales "
            f"{_pct(top['precision'])} are sound, of sound ones {_pct(top['recall'])} are top tier</li>",
            f"<li>AUROC of the tier for 'sound': {_fmt(fig['tier_auroc'])}</li>",
            f"<li>AUROC of the reward score for 'sound': <b id='fig-reward-auroc'>{_fmt(rw['auroc'])}</b> "
            f"(n={rw['n']}, {rw['n_sound']} sound)</li>",
        ]
        ia = fig["inter_annotator"]
        if ia["pairs"]:
            pairs = "; ".join(f"{e(p['annotators'][0])} / {e(p['annotators'][1])}: {_pct(p['agreement'])}, "
                              f"kappa {_fmt(p['kappa'])} (n={p['n']})" for p in ia["pairs"])
            out.append(f"<li>between annotators ({ia['n_rationales']} rationales labelled by two or more): "
                       f"{pairs}</li>")
        else:
            out.append("<li>between annotators: no rationale labelled by two people yet</li>")
        if fig.get("n_stale"):
            out.append(f"<li class='bad'>{fig['n_stale']} labels point at rationales that changed or are gone; "
                       "left out</li>")
        out.append("</ul>")
    if score_progress:
        out.append(f"<p class='note' id='score-progress'>reward scores: {score_progress['done']} of "
                   f"{score_progress['total']} ({e(score_progress['state'])}"
                   + (f": {e(score_progress['error'])}" if score_progress.get("error") else "") + ")</p>")
    return "".join(out)


def _select(name: str, value: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f"<option value='{e(v)}'{' selected' if v == value else ''}>{e(t)}</option>" for v, t in options)
    return f"<label>{e(name)} <select name='{e(name)}'>{opts}</select></label>"


def _rationale_html(r: dict, mine: dict | None, others: list, score: float | None) -> str:
    kind = KIND_TEXT.get(r["kind"], r["kind"])
    if r["kind"] != "free":
        kind += f" → {r['target']}"
    forced = "not forced" if r["forced_text"] is None else (r["forced"] or "none")
    tier = "none" if r["tier"] is None else r["tier"]
    flags = []
    if r["leak"]:
        flags.append("<span class='flag'>leak: says it was given the answer</span>")
    if r["status"] != "ranked":
        flags.append(f"<span class='flag'>{e(r['status'])}</span>")
    label = mine["label"] if mine else ""
    buttons = "".join(
        f"<button type='button' data-label='{lab}' aria-pressed='{'true' if lab == label else 'false'}'>"
        f"{i + 1} {e(LABEL_TEXT[lab])}</button>" for i, lab in enumerate(LABELS))
    other = "; ".join(f"{e(o['annotator'])}: {e(LABEL_TEXT[o['label']])}"
                      + (f" ({e(o['comment'])})" if o["comment"] else "") for o in others)
    forced_text = ("" if r["forced_text"] is None else
                   f"<details><summary>forced continuation</summary><pre>{e(r['forced_text'])}</pre></details>")
    return (
        f"<div class='rat' tabindex='-1' data-rid='{r['rid']}' data-label='{e(label)}' data-tier='{e(tier)}'>"
        f"<div class='meta'><b>#{r['rid']}</b> <span class='kind'>{e(kind)}</span> · tier <b>{e(tier)}</b> "
        f"({e(r['outcome'])}) · answer <b>{e(r['answer'] or 'none')}</b> · forced <b>{e(forced)}</b>"
        + (f" · reward <b class='score'>{score:.3f}</b>" if score is not None else "")
        + f" {''.join(flags)}</div>"
        f"<pre class='text'>{e(r['text']) or '(empty)'}</pre>{forced_text}"
        f"<div class='act'>{buttons}<button type='button' data-label=''>0 clear</button>"
        f"<input class='comment' maxlength='2000' placeholder='comment (c; Enter saves)' "
        f"value='{e(mine['comment'] if mine else '')}'> "
        f"<span class='mine'>{e(LABEL_TEXT[label]) if label else 'not labelled'}</span></div>"
        + (f"<div class='others'>others: {other}</div>" if other else "")
        + "</div>"
    )


def render_page(state: ReviewState, query: dict, nonce: str) -> str:
    data, sel = state.data, state.select(query)
    scores = state.scores()
    annotator = query["annotator"]
    tiers = [("", "any")] + [(str(t), str(t)) for t in data.tiers] + [("none", "none (not ranked)")]
    filters = (
        "<form method='get' id='filters'>"
        f"<label>annotator <input name='annotator' value='{e(annotator)}' size='12'></label> "
        + _select("tier", query["tier"], tiers) + " "
        + _select("kind", query["kind"], [("", "any")] + list(KIND_TEXT.items())) + " "
        + _select("dataset", query["dataset"], [("", "any")] + [(d, d) for d in data.datasets]) + " "
        + _select("show", query["show"], list(SHOW.items()))
        + " <button type='submit'>apply</button></form>")

    def link(page: int) -> str:
        return "?" + urlencode({**{k: v for k, v in query.items() if v}, "page": page})

    prev = (f"<a class='prev' href='{e(link(sel['page'] - 1))}'>← prev (p)</a>" if sel["page"] > 1 else "")
    nxt = (f"<a class='next' href='{e(link(sel['page'] + 1))}'>next (n) →</a>"
           if sel["page"] < sel["n_pages"] else "")
    pager = (f"<nav class='pager'>{prev} page {sel['page']} of {sel['n_pages']} · {sel['n_questions']} questions, "
             f"{sel['n_rationales']} rationales match {nxt}</nav>")
    body = []
    for qid, rows in sel["questions"]:
        q = data.questions[qid]
        choices = ("<p class='choices'>" + " ".join(f"({chr(65 + i)}) {e(c)}" for i, c in enumerate(q["choices"]))
                   + "</p>") if q["choices"] else ""
        groups, current = [], object()
        for r in rows:
            if r["tier"] != current:
                current = r["tier"]
                name = f"tier {r['tier']}" if r["tier"] is not None else "not ranked"
                n = sum(1 for x in rows if x["tier"] == r["tier"])
                groups.append(f"<h3>{e(name)} ({n})</h3>")
            groups.append(_rationale_html(r, sel["mine"].get(r["rid"]), sel["others"].get(r["rid"], []),
                                          scores.get(r["rid"])))
        body.append(f"<section class='q'><h2>{e(qid)} <small>{e(q['dataset'])}</small></h2>"
                    f"<pre class='question'>{e(q['question'])}</pre>{choices}"
                    f"<p>gold answer: <b class='gold'>{e(q['gold'])}</b></p>{''.join(groups)}</section>")
    if not body:
        body.append("<p>No rationale matches these filters.</p>")
    progress = state.scorer.progress() if state.scorer is not None and state.scorer.model else None
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="review-token" content="{e(state.token)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sml review: {e(data.run_dir.name)}</title>
<style nonce="{nonce}">{_CSS}</style></head>
<body data-annotator="{e(annotator)}">
<header><h1>sml review <small>{e(data.run_dir)}</small></h1>
<p id="progress">{e(state.progress_text(annotator))}</p>{filters}
<p class="keys">keys: j / k next / previous rationale · 1 sound · 2 right answer, unsound reasoning · 3 wrong ·
0 clear · c comment (Enter saves, Esc leaves) · n / p next / previous page</p>
<p id="status" role="status"></p></header>
<main><aside><details open><summary>Agreement</summary><div id="agreement">{render_panel(state.figures(), progress)}</div>
</details></aside>
<div id="list">{pager}{''.join(body)}{pager}</div></main>
<script nonce="{nonce}">{_JS}</script>
</body></html>"""


_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1em; color: #222; background: #fafafa; }
header { position: sticky; top: 0; background: #fafafa; border-bottom: 1px solid #ccc; padding: .3em 0; z-index: 1; }
h1 { font-size: 1.2em; margin: .2em 0; } h1 small { color: #666; font-weight: normal; }
h2 { font-size: 1.05em; margin: .3em 0; } h3 { font-size: .95em; margin: .6em 0 .2em; color: #444; }
p { margin: .3em 0; } .keys, .note, small { color: #666; font-size: .85em; }
main { display: flex; gap: 1em; align-items: flex-start; }
aside { order: 2; position: sticky; top: 9em; width: 24em; font-size: .85em; background: #fff;
        border: 1px solid #ccc; padding: .5em; }
#list { flex: 1; min-width: 0; }
.q { background: #fff; border: 1px solid #ccc; border-radius: 4px; padding: .5em .8em; margin: .8em 0; }
pre { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, monospace; font-size: .85em;
      margin: .2em 0; }
.question { font-family: inherit; font-size: .95em; }
.rat { border-left: 4px solid #ddd; padding: .2em .6em; margin: .4em 0; }
.rat.current { border-left-color: #1565c0; background: #eef4fc; }
.rat[data-label=sound] { border-left-color: #2e7d32; } .rat[data-label=right_unsound] { border-left-color: #ef6c00; }
.rat[data-label=wrong] { border-left-color: #c62828; }
.meta { font-size: .85em; } .flag { background: #c62828; color: #fff; border-radius: 3px; padding: 0 .3em; }
.act button { font-size: .8em; margin-right: .2em; cursor: pointer; }
.act button[aria-pressed=true] { background: #1565c0; color: #fff; border-color: #1565c0; }
.comment { font-size: .8em; width: 18em; } .mine { font-size: .8em; color: #444; }
.others { font-size: .8em; color: #555; }
table.conf { border-collapse: collapse; } .conf th, .conf td { border: 1px solid #ccc; padding: .1em .4em; }
.conf td { text-align: right; } .bad, #status.bad { color: #c62828; }
.pager { margin: .5em 0; font-size: .9em; }
"""

_JS = """
(() => {
  const TEXT = {sound: 'sound reasoning', right_unsound: 'right answer, unsound reasoning', wrong: 'wrong'};
  const KEYS = {'1': 'sound', '2': 'right_unsound', '3': 'wrong', '0': '', 'x': ''};
  const token = document.querySelector('meta[name="review-token"]').content;
  const annotator = document.body.dataset.annotator;
  const cards = Array.from(document.querySelectorAll('.rat'));
  let current = 0;
  function say(text, bad) {
    const s = document.getElementById('status');
    s.textContent = text;
    s.className = bad ? 'bad' : '';
  }
  function focusCard(i, scroll) {
    if (!cards.length) return;
    current = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c, k) => c.classList.toggle('current', k === current));
    if (scroll) cards[current].scrollIntoView({block: 'nearest'});
  }
  async function post(url, body) {
    const r = await fetch(url, {method: 'POST', body: JSON.stringify(body),
      headers: {'Content-Type': 'application/json', 'X-Review-Token': token}});
    let data = {};
    try { data = await r.json(); } catch (err) { data = {}; }
    if (!r.ok) throw new Error(data.error || ('HTTP ' + r.status));
    return data;
  }
  function show(card, label) {
    card.dataset.label = label;
    card.querySelectorAll('button[data-label]').forEach(
      b => b.setAttribute('aria-pressed', b.dataset.label && b.dataset.label === label ? 'true' : 'false'));
    card.querySelector('.mine').textContent = label ? TEXT[label] : 'not labelled';
  }
  async function setLabel(card, label) {
    const rid = Number(card.dataset.rid);
    const comment = card.querySelector('.comment').value;
    try {
      const data = label ? await post('api/label', {rid, label, comment, annotator})
                         : await post('api/unlabel', {rid, annotator});
      show(card, label);
      document.getElementById('agreement').innerHTML = data.panel;  // escaped by the server
      document.getElementById('progress').textContent = data.progress;
      say(label ? '#' + rid + ': ' + TEXT[label] + ' (saved)' : '#' + rid + ': label removed');
      return true;
    } catch (err) {
      say('#' + rid + ' not saved: ' + err.message, true);
      return false;
    }
  }
  cards.forEach((card, i) => {
    card.addEventListener('click', () => focusCard(i, false));
    card.querySelectorAll('button[data-label]').forEach(b => b.addEventListener('click', () => {
      focusCard(i, false);
      setLabel(card, b.dataset.label);
    }));
    const input = card.querySelector('.comment');
    input.addEventListener('keydown', ev => {
      if (ev.key === 'Enter') {
        ev.preventDefault();
        if (card.dataset.label) setLabel(card, card.dataset.label);
        else say('choose a label first, then the comment is saved with it', true);
      } else if (ev.key === 'Escape') {
        input.blur();
      }
    });
  });
  document.addEventListener('keydown', async ev => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' ||
        t.tagName === 'TEXTAREA'))) return;
    const card = cards[current];
    if (ev.key === 'j') focusCard(current + 1, true);
    else if (ev.key === 'k') focusCard(current - 1, true);
    else if (ev.key in KEYS && card) {
      ev.preventDefault();
      if (await setLabel(card, KEYS[ev.key]) && KEYS[ev.key]) focusCard(current + 1, true);
    } else if (ev.key === 'c' && card) {
      ev.preventDefault();
      card.querySelector('.comment').focus();
    } else if (ev.key === 'n' || ev.key === 'p') {
      const a = document.querySelector(ev.key === 'n' ? 'a.next' : 'a.prev');
      if (a) a.click();
    }
  });
  document.querySelectorAll('#filters select').forEach(s => s.addEventListener('change', () => s.form.submit()));
  focusCard(0, false);
})();
"""


# --- the app -----------------------------------------------------------------------------------------
def make_app(state: ReviewState, allowed_hosts: list[str] | None = None):
    """The Starlette app serving `state`. `allowed_hosts`: Host header values accepted (default: the
    loopback names, plus the configured host)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    if allowed_hosts is None:
        host = state.config.host
        allowed_hosts = ["*"] if host in ("0.0.0.0", "::") else sorted({*LOOPBACK_HOSTS, "[::1]", host})

    def secured(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def page(request):
        nonce = secrets.token_urlsafe(16)
        query = parse_query(request.query_params, state.config.annotator)
        text = await run_in_threadpool(render_page, state, query, nonce)
        response = HTMLResponse(text)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
        return secured(response)

    def error(status: int, message: str):
        return secured(JSONResponse({"error": message}, status_code=status))

    async def body_of(request):
        """The JSON body of a write, after the token check; or an error response."""
        sent = request.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(sent.encode(), state.token.encode()):
            return None, error(403, f"missing or wrong {TOKEN_HEADER}: reload the page to get this server's token")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return None, error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return None, error(400, "the body must be a JSON object")
        return body, None

    async def write(request, action):
        body, failed = await body_of(request)
        if failed is not None:
            return failed
        try:
            result = await run_in_threadpool(action, body)
        except LookupError as err:
            return error(404, str(err.args[0]))
        except ValueError as err:
            return error(400, str(err))
        annotator = body.get("annotator", "")
        progress = state.scorer.progress() if state.scorer is not None and state.scorer.model else None
        panel = await run_in_threadpool(lambda: render_panel(state.figures(), progress))
        return secured(JSONResponse({"ok": True, "result": result, "panel": panel,
                                     "progress": state.progress_text(annotator)}))

    async def label(request):
        return await write(request, state.set_label)

    async def unlabel(request):
        return await write(request, state.delete_label)

    async def agreement(request):
        return secured(JSONResponse(await run_in_threadpool(state.figures)))

    async def scores(request):
        progress = state.scorer.progress() if state.scorer is not None else {"state": "no scorer"}
        return secured(JSONResponse(progress))

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/api/label", label, methods=["POST"]),
            Route("/api/unlabel", unlabel, methods=["POST"]),
            Route("/api/agreement", agreement, methods=["GET"]),
            Route("/api/scores", scores, methods=["GET"]),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)],
    )
