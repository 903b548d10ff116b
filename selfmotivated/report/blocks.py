"""The report as blocks (heading, paragraph, table, list, code, image) rendered to Markdown and HTML, and the
formatting of its numbers."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from .config import ReportConfig
from .runs import CONTROLS, MODELS, Run, _num, controls_configured


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    style: str = ""  # "" | "note" | "warn"


@dataclass
class Table:
    header: list
    rows: list
    row_styles: list | None = None  # "" or "published" per row


@dataclass
class Bullets:
    items: list


@dataclass
class Code:
    text: str
    summary: str = ""  # HTML shows it folded under this line


@dataclass
class Image:
    path: Path
    caption: str


def render_markdown(title: str, blocks: list, base: Path) -> str:
    def esc(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * (b.level + 1) + " " + b.text, ""]
        elif isinstance(b, Para):
            prefix = {"warn": "> **Warning:** ", "note": "> "}.get(b.style, "")
            out += [prefix + b.text, ""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(esc(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Code):
            if b.summary:
                out += [b.summary, ""]
            out += ["```", b.text, "```", ""]
        elif isinstance(b, Image):
            rel = Path(b.path).relative_to(base) if Path(b.path).is_relative_to(base) else Path(b.path)
            out += [f"![{b.caption}]({rel.as_posix()})", "", f"*{b.caption}*", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
tr.published td { color: #555; font-style: italic; background: #f4f7fb; }
p.note { color: #555; font-size: .92em; }
p.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: .4em .8em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def render_html(title: str, blocks: list) -> str:
    """One self-contained page: inline CSS, images as data: URIs, no external asset."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level + 1}>{e(b.text)}</h{b.level + 1}>")
        elif isinstance(b, Para):
            text = e(b.text)
            if b.style == "warn":
                text = "<strong>Warning:</strong> " + text
            out.append(f'<p class="{b.style}">{text}</p>' if b.style else f"<p>{text}</p>")
        elif isinstance(b, Table):
            styles = b.row_styles or [""] * len(b.rows)
            out.append("<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b.header)
                       + "</tr></thead><tbody>")
            for row, style in zip(b.rows, styles):
                cls = f' class="{style}"' if style else ""
                out.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            pre = f"<pre>{e(b.text)}</pre>"
            out.append(f"<details><summary>{e(b.summary)}</summary>{pre}</details>" if b.summary else pre)
        elif isinstance(b, Image):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                       f"<figcaption>{e(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def pct(x) -> str:
    """A fraction as a percentage with one decimal, or n/a."""
    x = _num(x)
    return "n/a" if x is None else f"{100 * x:.1f}"


def num(x, digits: int = 3) -> str:
    x = _num(x)
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_cell(cell: dict | None) -> str:
    """'41.3 ±4.1 (n=150)': accuracy in %, ± half the width of the 95% interval, number of questions."""
    if not cell or cell.get("accuracy") is None:
        return "n/a"
    text = pct(cell["accuracy"])
    ci = cell.get("ci95")
    if ci:
        text += f" ±{100 * (ci[1] - ci[0]) / 2:.1f}"
    if cell.get("n") is not None:
        text += f" (n={cell['n']})"
    return text + ("*" if cell.get("partial") else "")


def fmt_seconds(s) -> str:
    s = _num(s)
    if s is None:
        return "n/a"
    if s < 60:
        return f"{s:.1f} s"
    h, rest = divmod(round(s), 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _published_label(row: dict, published: dict) -> str:
    source = published["sources"].get(row.get("source"), {})
    return f"{row['label']}, published ({source.get('short', row.get('source', '?'))})"


def _published_sources(keys: list[str], published: dict) -> Para:
    """The full reference of each source behind the published rows shown."""
    used = dict.fromkeys(published["rows"][k]["source"] for k in keys)
    parts = []
    for name in used:
        src = published["sources"].get(name, {})
        parts.append(f"{src.get('short', name)}: {src.get('citation', '')}; figures from "
                     f"{src.get('where', '?')}. {src.get('note', '')}")
    return Para("Published rows: " + " ".join(parts), "note")


def _published_shown(config: ReportConfig, published: dict, datasets: list[str]) -> list[str]:
    """The configured published rows that report a figure for at least one of these datasets."""
    return [k for k in config.published
            if any(published["rows"][k]["accuracy"].get(d) is not None for d in datasets)]


def _published_cells(key: str, published: dict, datasets: list[str]) -> list[str]:
    acc = published["rows"][key]["accuracy"]
    return [num(acc.get(d), 1) if acc.get(d) is not None else "-" for d in datasets]


def _has(cell: dict | None) -> bool:
    return bool(cell) and cell.get("accuracy") is not None


def _model_keys(run: Run) -> list[str]:
    """The model rows of a run's tables: every row of MODELS, but a control row only when the run asked for
    it or has its numbers (a run without controls shows no empty control rows), then rows MODELS lacks."""
    configured = controls_configured(run)
    return ([k for k in MODELS if k not in CONTROLS or k in configured or run.accuracy.get(k)]
            + sorted(k for k in run.accuracy if k not in MODELS))


def _overlap(a: dict, b: dict) -> bool | None:
    if not (a.get("ci95") and b.get("ci95")):
        return None
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]
