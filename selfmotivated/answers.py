"""The answer checker: find the final answer in a model's text and compare it with the gold answer.

Every stage relies on this one module: ranking rationales, any correctness reward, evaluation and
`sml score`. It aims to agree with a careful human reading of outputs in many styles: ours ("...
The answer is 42."), Kojima et al.'s zero-shot-CoT answer triggers, Fine-tune-CoT's "--> 42 END",
markdown and LaTeX ("**Answer:** 42", "\\boxed{42}", "#### 42") and chatty models.

`extract_answer` is a small pipeline of ordered rules:

1. Clean: drop chat special tokens; keep only what follows the last `</think>` when anything does;
   drop a leading "A:" (an echoed few-shot answer marker, never option A); unify unicode minus,
   quotes and spaces; drop markdown bold; turn simple LaTeX into text (`\\frac{3}{4}` -> `3/4`).
2. Cut at a new question: a model that keeps going invents the next few-shot block. The text is cut
   at the first line starting with `Q:` / `Question:` / `Human:` / `User:` that follows any
   non-blank text, even when no answer came before it: what follows belongs to another question.
3. Answer triggers, each giving a span (the rest of the trigger's line; or, under a heading such as
   "**Answer:**", the next line when it looks like an answer and not like "Step 1: ..."):
   "answer is/was/would be/should be/will be/:/=" (also "The answer (arabic numerals) is", "among
   A through E, the answer is", "Final Answer:"), "correct option is", "-->", "#### 72", `\\boxed{}`;
   for text answers also "concatenating them is", "the final string is"; for choices also "I would
   choose E", "Ans: B", and a letter before its verdict ("D is the correct choice", "(A) is
   correct"). Spans are tried from the LAST trigger backwards; the first that parses as an answer of
   the type wins, so "The answer is 5. Wait, actually the answer is 6." gives 6, while a trailing
   "I hope the answer is clear." does not hide an earlier answer. A span opening with "not" ("The
   answer is not 10") is a denial and skipped (a choice option that itself opens with "not", as
   CommonsenseQA's "not hungry", still counts). "answer must be" is no trigger: rationales use it
   for a constraint ("The answer must be an item that can absorb ink"). A list of the options
   belongs to its trigger, never to the answer: "The answer (Yes or No) is dependent on ..." names
   none, "the answer is (A) through (E) ..." is no "A", and "The answer is A or B" picks neither.
4. Fallback when no span parses, per type (below).

Per type:
- number: the first number of the span's first sentence (commas, currency, units, `%` ignored;
  `3/4` is 0.75; dates such as 05/01/2021 are no numbers); when the span opens with arithmetic
  ("20 - 12 = 8", "18 eggs - 7 eggs = 11") the number after its last "="; else a leading number
  word ("twelve"). "1.5 million" is 1.5, not 1500000: GSM8K golds count in the question's unit
  ("$4 million" has gold 4).
  Fallback: the last sentence holding a number gives the number after its last "=" (or after "which
  rounds to"/"or"), else its last number: "It takes 120/24 = 5 hours to read 120 pages." gives 5.
  This is the plain "last number in the text" rule except for sentences with "="; on GSM8K's own
  solutions without their "####" line it agrees with the gold in 99.2% of rows against 97.2%.
- choice: in the span, (a) a letter at its start: "C", "(C)", "C)", "C.", "option C", "(c)",
  '"C"', "likely C". An upper-case bare "A" followed by a word is the letter unless those words open
  another option's text ("A bank" with (B) bank -> B). A letter at the start wins over an option
  text after it ("(C) blotter" -> C). (b) Else an option given by its text: exact, then whole-word
  containment (earliest, then longest; plural "s" allowed; mentions after "not"/"unlike" ignored;
  dates compared as M/D/YYYY, "May 1, 2021" included). (c) Else a number equal to the only number of
  exactly one option (AQuA: "67.4" -> "$67.40"). (d) Else a single "(C)" later in the sentence.
  A letter must exist: A.. up to the number of options, A-F when the options are unknown.
  Fallback, only for clear patterns, never a letter guessed from random text: the last line is only
  a letter ("(C)", "Option C"), or a letter with its own option text ("C) tent") that is not the
  end of a list of options; or the last sentence opens with a conclusion cue ("So", "Therefore",
  "At the end", "Of the above choices", ...), has no negation, and names exactly one option's text
  ("At the end of the game, Alice has the blue ball.").
- yes_no: in the span's first sentence the first yes/no (an echoed "yes or no" ignored), else
  true/false, else Coin Flip's state ("tails up"/"not heads up" -> no, "heads up" -> yes).
  Fallback: the last sentence opens with yes/no and punctuation ("So, no."); else it states the
  coin's side after a conclusion cue ("So the coin is now tails up."); else the text opens with
  "Yes,"/"No." (chatty, and StrategyQA's target style). "No one flipped the coin." is no answer.
- text: a quoted string at the span's start, else its first word stripped of quotes, brackets and
  trailing punctuation (a filler word such as "the"/"that" first: the first quoted string instead).
  Case is kept. Fallback: none (None).

Matching (`answers_match`): integers exactly and other numbers within a relative tolerance of 1e-6
("4.0" == "4", 0.3333333333 == 1/3, 1000001 != 1000000); choice letters and yes/no
case-insensitively; text EXACTLY (case-sensitive, whitespace stripped), as Reasoning Teachers
compares, so "YAJO" is wrong for gold "yajo" and the one gold "yaeA" needs its capital. A prediction
of None never matches.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selfmotivated.records import (
    ANSWER_TYPES,
    BUILTIN_ANSWER_TYPES,
    CHOICE_LETTERS,
    Example,
    canonical_number,
)

ANSWER_PREFIX = "The answer is"
DEFAULT_CHOICE_LETTERS = "ABCDEF"  # letters accepted when the options are unknown (Date has up to F)

__all__ = [
    "ANSWER_PREFIX",
    "format_answer_line",
    "extract_answer",
    "answers_match",
    "normalize_gold",
    "check_answer",
    "parse_choices_from_question",
    "ScoreConfig",
    "score_file",
]


def _check_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


# ----------------------------------------------------------------------------------------------
# Step 1: cleaning

_SPECIAL_TOKEN_RE = re.compile(r"<\|[^|<>\n]{1,40}\|>|</s>|<s>|<eos>|<end_of_turn>")
_UNICODE_MAP = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\uff1a": ":",
        "\uff04": "$",
    }
)
_LATEX_SUBS = [
    (re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.]+)\s*\}\s*\{\s*([\d.]+)\s*\}"), r"\1/\2"),
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\([$%])"), r"\1"),
    (re.compile(r"\{,\}"), ","),  # "1{,}000"
    (re.compile(r"(?<=\d)\\[,!;](?=\d)"), ""),  # "1\,000"
    (re.compile(r"\\(?:left|right|displaystyle|[,!;])"), ""),
    (re.compile(r"\\(?:times|cdot)"), " * "),
    (re.compile(r"\\[()\[\]]"), " "),  # inline/display math delimiters
]


def _clean(text: str) -> str:
    text = _SPECIAL_TOKEN_RE.sub("", text)
    # A reasoning model's own answer follows its thinking; the thinking may try several answers.
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        if after.strip():
            text = after
    text = text.replace("<think>", "").translate(_UNICODE_MAP)
    # A model that echoes the few-shot format starts with the answer marker "A:"; it is no option.
    text = re.sub(r"^\s*A:\s*", "", text)
    text = text.replace("**", "")  # markdown bold splits triggers: "**Answer:** 42"
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return text.strip()


# ----------------------------------------------------------------------------------------------
# Step 2: cut where the model starts a new question

_NEW_QUESTION_RE = re.compile(r"\n[ \t>#]*(?:Q|Question|Human|User)[ \t]*\d*[ \t]*:", re.I)


def _cut_new_question(text: str) -> str:
    for m in _NEW_QUESTION_RE.finditer(text):
        if text[: m.start()].strip():
            return text[: m.start()]
    return text


# ----------------------------------------------------------------------------------------------
# Step 3: answer triggers and their spans

# A trigger that lists the options ("The answer (Yes or No) is", "the answer is (A) through (E)",
# "(A, B, C, D or E)") names the choices, not the pick: the list belongs to the trigger, and is cut
# from the start of a span (`_strip_option_list`). Items of one list are all yes/no words or all
# letters, and a list without brackets needs "or", "through", "to" or "/" before its last item, so
# "No, and no one flipped it" is no list.
_YES_NO_ITEM = r"[\"']?(?i:yes|no|true|false)[\"']?"
_LETTER_ITEM = r"(?:\(\s*[A-Fa-f]\s*\)|[A-F](?![\w'/]))"
_LIST_LEAD = r"(?:(?i:either|among|from|between|one\s+of)\s+)?"
_LIST_LAST_SEP = r"(?:\s*,?\s+(?i:or|through|thru|to)\s+|\s*[/|]\s*)"


def _option_list(item: str) -> str:
    bare = rf"{_LIST_LEAD}{item}(?:\s*,\s*{item})*{_LIST_LAST_SEP}{item}"
    bracketed = rf"\(\s*{_LIST_LEAD}{item}(?:(?:\s*,\s*|{_LIST_LAST_SEP}|\s*[-\u2013]\s*){item})+\s*\)"
    return rf"(?:{bracketed}|{bare})"


_LETTER_LIST = _option_list(_LETTER_ITEM)
_OPTION_LIST_RE = re.compile(rf"^(?:{_option_list(_YES_NO_ITEM)}|{_LETTER_LIST})(?!\w)")

_TRIGGER_RE = re.compile(
    r"""
    \banswer[*_]*
        (?:\s+to\s+(?:the|this)\s+question)?
        (?:\s*\([^()\n]{2,40}\))?               # Kojima: "(arabic numerals)", "(Yes or No)"
        (?:\s*""" + _LETTER_LIST + r""")?        # "(A) through (E)", a list with brackets inside
        [*_]*\s*
        (?:is|was|would\s+be|should\s+be|will\s+be|=|:)
    | ^[ \t#>]*(?:final[ \t]+)?answer[ \t*_#:]*(?=\n)  # an "Answer" heading with the answer below
    | \b(?:correct|right|best|final)\s+(?:option|choice)\s*(?:is|would\s+be|:)
    | -->                                        # Fine-tune-CoT completions
    | \#\#\#\#(?=[ \t]*\S+[ \t]*(?:\n|\Z))          # GSM8K "#### 72" (not a "#### Step 1" heading)
    """,
    re.I | re.X | re.M,
)
# Only for text answers (last letters): our exemplars say 'Concatenating them is "aaye".' first.
_TEXT_TRIGGER_RE = re.compile(
    r"""
    \bconcatenat\w*
        (?:\s+(?:them|these|those|it|all|the\s+(?:last\s+)?letters|all\s+the\s+letters))?
        (?:\s+together)?\s*
        (?:is|are|gives(?:\s+us)?|yields|results\s+in|we\s+get|forms|:|=)
    | \b(?:final|resulting|concatenated|combined)\s+(?:string|word|letters|result)\s+(?:is|are)
    | \bthe\s+result\s+is
    """,
    re.I | re.X,
)
# Only for choices: "I would choose E", "I'd go with (B)", and abbreviations followed by a letter:
# "Ans: B", "answer.A", "Correct answer C".
_CHOICE_TRIGGER_RE = re.compile(
    r"\b(?i:choose|pick|select|go\s+with)\b|\b(?i:ans|answer)\b[\s.:=>-]*(?=\(?[A-Z]\b)"
)
# A letter named before its verdict: "D is the correct choice", "Hence (A) is correct", "Option B is
# right", "(B) must be true".
_LETTER_VERDICT_RE = re.compile(
    r"(?:\b(?i:option|choice)\s+)?(?<![\w'])\(?([A-Z])\)?\s+"
    r"(?i:is|would\s+be|must\s+be)\s+(?i:the\s+)?(?i:most\s+)?(?i:correct|right|best|true|answer)\b"
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _braced(text: str, start: int) -> str:
    """Content of the brace group opened just before `start`, nesting respected."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]


def _first_line(text: str) -> str:
    """The rest of the trigger's line, or when that is empty the next line that holds a letter or a
    digit (the answer under an "**Answer:**" or "Final Answer" heading). A later line counts only
    when it looks like an answer, not like the first of several steps ("Step 1: 16 - 3 = 13")."""
    lines = text.split("\n")
    if re.search(r"[A-Za-z0-9]", lines[0]):
        return lines[0].strip()
    for line in lines[1:]:
        if re.search(r"[A-Za-z0-9]", line):
            line = line.strip()
            if re.match(r"(?i:step\s*\d)|\d+[.)]\s", line) or len(line.split()) > 8:
                return ""
            return line
    return ""


def _spans(text: str, answer_type: str) -> list[str]:
    """Answer spans of all triggers, last one first."""
    found = []  # (position, span)
    for m in _TRIGGER_RE.finditer(text):
        span = _first_line(text[m.end() :])
        if m.group(0) == "-->":
            span = re.split(r"\bEND\b", span)[0]  # Fine-tune-CoT ends completions with " END"
        found.append((m.start(), span))
    extra = {"text": _TEXT_TRIGGER_RE, "choice": _CHOICE_TRIGGER_RE}.get(answer_type)
    if extra is not None:
        for m in extra.finditer(text):
            found.append((m.start(), _first_line(text[m.end() :])))
    if answer_type == "choice":
        for m in _LETTER_VERDICT_RE.finditer(text):
            found.append((m.start(), m.group(1)))
    for m in _BOXED_RE.finditer(text):
        found.append((m.start(), _braced(text, m.end()).strip()))
    found.sort(key=lambda item: item[0], reverse=True)
    if answer_type in ("yes_no", "choice"):
        found = [(start, _strip_option_list(span)) for start, span in found]
    return [span for _, span in found if span]


def _strip_option_list(span: str) -> str:
    """The span without a list of the options at its start: "(Yes or No) is dependent on ..." is
    "is dependent on ...", which names no answer (the list's first item is no pick)."""
    stripped = _strip_span_start(span)
    m = _OPTION_LIST_RE.match(stripped)
    return _strip_span_start(stripped[m.end() :]) if m else span


_SENTENCE_END_RE = re.compile(r"(?<=[.!?;])\s+|\n")
_ABBREVIATION_RE = re.compile(r"\b(?:rs|mr|mrs|ms|dr|st|vs|approx|e\.g|i\.e)\.$", re.I)


def _sentences(text: str) -> list[str]:
    """Sentences and lines of `text`. "." ends a sentence only before whitespace, so "2.5" and
    "$1,234.50" stay whole, and not after an abbreviation ("Rs. 750")."""
    text = text.strip()
    parts, start = [], 0
    for m in _SENTENCE_END_RE.finditer(text):
        if "\n" not in m.group(0) and _ABBREVIATION_RE.search(text[start : m.start()]):
            continue
        parts.append(text[start : m.start()])
        start = m.end()
    parts.append(text[start:])
    return parts


def _first_sentence(span: str) -> str:
    return _sentences(span)[0]


def _strip_span_start(span: str) -> str:
    # Markdown and separators before the answer; a "-" that starts a number stays.
    return re.sub(r"^(?:[\s:=>*_`$#,]|-(?![\d.$]))+", "", span)


# ----------------------------------------------------------------------------------------------
# number

_NUMBER_RE = re.compile(r"(?<![\w./])(-?)(\d+(?:\.\d+)?|\.\d+)(?:/(\d+(?:\.\d+)?))?(?!\d|/\d)")
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORD_RE = re.compile(
    r"^(?:(%s)(?:[\s-](%s))?|(%s))\b" % ("|".join(_TENS), "|".join(_UNITS[1:10]), "|".join(_UNITS)),
    re.I,
)


def _prepare_numbers(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators
    text = re.sub(r"[$€£¥₹]|\bRs\.?\s*", "", text)  # currency: "-$5" -> "-5"
    return text


def _numbers(text: str) -> list[str]:
    """Canonical numbers in `text`, in order."""
    out = []
    for m in _NUMBER_RE.finditer(_prepare_numbers(text)):
        sign, value, denominator = m.groups()
        try:
            out.append(canonical_number(f"{sign}{value}/{denominator}" if denominator else f"{sign}{value}"))
        except ValueError:  # "3/0"
            continue
    return out


def _is_arithmetic(head: str) -> bool:
    """Whether `head` is a calculation such as "20 - 12" or "18 eggs - 7 eggs" (units allowed),
    not a number followed by words ("5, since x")."""
    bare = re.sub(r"[A-Za-z]+", " ", _prepare_numbers(head))
    return (
        re.fullmatch(r"[\s\d.,+\-*/×÷^()%]*", bare) is not None
        and len(_numbers(head)) >= 2
        and re.search(r"[+\-*/×÷^]|\b(?:x|times)\b", head) is not None
    )


def _number_from_span(span: str) -> str | None:
    sentence = _strip_span_start(_first_sentence(span))
    # "The answer is 20 - 12 = 8": the result is after the last "=" of the chain.
    if "=" in sentence and _is_arithmetic(sentence.split("=", 1)[0]):
        after = sentence.rsplit("=", 1)[1]
        numbers = _numbers(after)
        if numbers:
            return numbers[0]
    numbers = _numbers(sentence)
    if numbers:
        return numbers[0]
    m = _NUMBER_WORD_RE.match(sentence.strip())
    if m and not re.match(r"\s*(?:hundred|thousand|million|billion)\b", sentence.strip()[m.end() :], re.I):
        tens, unit, single = m.groups()
        if single:
            return str(_UNITS.index(single.lower()))
        return str(10 * (_TENS.index(tens.lower()) + 2) + (_UNITS.index(unit.lower()) if unit else 0))
    return None


_RESTATE_RE = re.compile(
    r"\b(?:which\s+(?:is|means|rounds)|rounds?\s+(?:up\s+|down\s+)?to|or|meaning|so)\b", re.I
)


def _number_fallback(text: str) -> str | None:
    """The result of the last sentence that holds a number: the number after its last "=" (or after
    a restatement such as "which rounds to"), else its last number. "It takes 120/24 = 5 hours to
    read 120 pages." gives 5, not 120."""
    sentences = [s for s in _sentences(text) if _numbers(s)]
    if not sentences:
        return None
    last = sentences[-1]
    if "=" in last:
        after = last.rsplit("=", 1)[1]
        m = _RESTATE_RE.search(after)
        if m and _numbers(after[m.end() :]):
            return _numbers(after[m.end() :])[0]
        if _numbers(after):
            return _numbers(after)[0]
    return _numbers(last)[-1]


# ----------------------------------------------------------------------------------------------
# choice

_LETTER_LIST_PREFIX_RE = re.compile(r"^\s*\(?([A-Z])\)\s*")


def _choice_texts(choices: Sequence) -> tuple[str, ...]:
    """Option texts; accepts CommonsenseQA dicts and strips AQuA's "A)" prefixes when every option
    has them in order."""
    texts = [c["text"] if isinstance(c, dict) else str(c) for c in choices]
    prefixes = [_LETTER_LIST_PREFIX_RE.match(t) for t in texts]
    if texts and all(p and p.group(1) == CHOICE_LETTERS[i] for i, p in enumerate(prefixes)):
        texts = [t[p.end() :] for t, p in zip(texts, prefixes)]
    return tuple(t.strip() for t in texts)


_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
# "May 1, 2021" (lower-cased) -> "5/1/2021", to compare with Date Understanding's MM/DD/YYYY options.
_MONTH_DATE_RE = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})\b"
)


def _norm_text(text: str) -> str:
    """Lower-case option or answer text for comparison: no quotes, `$`, thousands commas, trailing
    `.,;:`, leading article; dates without leading zeros."""
    text = text.translate(_UNICODE_MAP).lower().replace("**", "")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"[$\"`]", "", text)
    text = _MONTH_DATE_RE.sub(
        lambda m: f"{_MONTHS.index(m.group(1)[:3]) + 1}/{m.group(2)}/{m.group(3)}", text
    )
    text = re.sub(r"\b0?(\d{1,2})/0?(\d{1,2})/(\d{4})\b", r"\1/\2/\3", text)
    text = re.sub(r"\s+", " ", text).strip(" '.,;:")
    text = re.sub(r"^(?:the|a|an) ", "", text)
    return text


_NEGATION_CUE_RE = re.compile(r"\b(?:not|unlike|rather than|instead of|except|neither|nor)\b|n't\b")


def _mentioned_choices(text: str, choices: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """(start, -length, index) of every option whose text occurs in `text` as whole words, except
    those after a negation ("a library, not a bank" names only the library)."""
    norm = _norm_text(text)
    negation = _NEGATION_CUE_RE.search(norm)
    if negation:
        norm = norm[: negation.start()]
    hits = []
    for i, choice in enumerate(choices):
        c = _norm_text(choice)
        if not c:
            continue
        m = re.search(r"(?<![\w./])" + re.escape(c) + r"(?:s|es)?(?![\w/]|\.\d)", norm)
        if m:
            hits.append((m.start(), -len(c), i))
    return sorted(hits)


def _choice_by_text(span: str, choices: tuple[str, ...]) -> int | None:
    sentence = _first_sentence(span)
    target = _norm_text(sentence)
    for i, choice in enumerate(choices):
        if _norm_text(choice) == target:
            return i
    hits = _mentioned_choices(sentence, choices)
    return hits[0][2] if hits else None


def _choice_by_number(span: str, choices: tuple[str, ...]) -> int | None:
    """AQuA-style numeric options: the span's number equals the only number of one option."""
    sentence = _first_sentence(span)
    if re.search(r"\d/\d+/\d", sentence):
        return None
    numbers = _numbers(sentence)
    if not numbers:
        return None
    matches = []
    for i, choice in enumerate(choices):
        option_numbers = _numbers(choice)
        if len(option_numbers) == 1 and _numbers_close(option_numbers[0], numbers[0]):
            matches.append(i)
    return matches[0] if len(matches) == 1 else None


_LETTER_START_RE = re.compile(
    r"""
    \(\s*([A-Za-z])\s*\)            # (C)  (c)
    | \[([A-Za-z])\]                # [C]
    | ([A-Za-z])\)                  # C)   c)
    | ([A-Z])(?![\w'\-/&])          # C  C.  C:  (not "Alice", "A's", "C/D")
    """,
    re.X,
)
_OPTION_WORD_RE = re.compile(
    r"^(?:the\s+)?(?:(?:correct|right|best|final)\s+)?(?:option|choice|letter|answer)\s*(?:is\s+)?[:\-]?\s*",
    re.I,
)


_HEDGE_RE = re.compile(
    r"^(?:most\s+)?(?:likely|probably|definitely|clearly|certainly|therefore|thus|then|just|simply)\b[\s,:]*",
    re.I,
)


def _letter_at_start(span: str, letters: str, choices: tuple[str, ...]) -> str | None:
    s = _strip_span_start(span)
    s = re.sub(r"^(?:\\boxed\s*\{|\{|\((?=\s*(?i:option|choice)))\s*", "", s)
    s = _HEDGE_RE.sub("", s.lstrip("\"'"), count=1)  # "The answer is likely E", 'is "E"'
    s = _OPTION_WORD_RE.sub("", s, count=1)
    s = _strip_span_start(s).lstrip("\"'")
    m = _LETTER_START_RE.match(s)
    if m is None:
        # A lone lower-case letter ("The answer is c.") is still a letter.
        m = re.match(r"([a-z])\W*$", _first_sentence(s))
        if m is None or m.group(1).upper() not in letters:
            return None
        return m.group(1).upper()
    letter = next(g for g in m.groups() if g).upper()
    if letter not in letters:
        return None
    rest = s[m.end() :]
    # "A" is also an article: "A bank" may name option (B) bank. Prefer an option text it opens.
    if m.group(4) == "A" and re.match(r"\s+[a-z]", rest) and choices:
        words = _norm_text(_first_sentence(rest))
        for i, choice in enumerate(choices):
            c = _norm_text(choice)
            if c and re.match(re.escape(c) + r"(?:s|es)?\b", words):
                return CHOICE_LETTERS[i]
    return letter


def _choice_from_span(span: str, letters: str, choices: tuple[str, ...]) -> str | None:
    letter = _letter_at_start(span, letters, choices)
    if letter:
        return letter
    if choices:
        index = _choice_by_text(span, choices)
        if index is None:
            index = _choice_by_number(span, choices)
        if index is not None:
            return CHOICE_LETTERS[index]
    # "the television, which is (C)": one bracketed letter later in the sentence.
    found = {
        (bracketed or named).upper()
        for bracketed, named in re.findall(r"\(([A-Za-z])\)|\boption\s+([A-Z])\b", _first_sentence(span))
    }
    found &= set(letters)
    return found.pop() if len(found) == 1 else None


def _negative_option(span: str, choices: tuple[str, ...]) -> str | None:
    words = _norm_text(_strip_span_start(span))
    for i, choice in enumerate(choices):
        c = _norm_text(choice)
        if c.startswith("not ") and re.match(re.escape(c) + r"\b", words):
            return CHOICE_LETTERS[i]
    return None


_CONCLUSION_CUE_RE = re.compile(
    r"^(?:so|thus|therefore|hence|finally|overall|in\s+conclusion|in\s+summary|in\s+the\s+end|"
    r"at\s+the\s+end|by\s+the\s+end|after\s+all|(?:of|among)\s+the\s+(?:above\s+|given\s+)?(?:choices|options)|"
    r"the\s+(?:best|correct|right|most\s+likely)|only)\b",
    re.I,
)
_NEGATION_RE = re.compile(r"\b(?:not|never|no|cannot|neither|nor)\b|n't\b", re.I)
_LONE_LETTER_RE = re.compile(
    r"^[\s#>*_-]*(?i:(?:the\s+)?(?:final\s+)?(?:answer|option|choice)\s*[:\-]?\s*)?"
    r"(?:\(\s*([A-Za-z])\s*\)|([A-Z]))[.):]?(?:\s+(.*))?$"
)


def _last_sentence(text: str) -> str:
    parts = [p for p in _sentences(text) if re.search(r"\w", p)]
    return parts[-1] if parts else ""


def _choice_fallback(text: str, letters: str, choices: tuple[str, ...]) -> str | None:
    lines = [line.strip() for line in text.split("\n") if re.search(r"\w", line)]
    # A last line that is only a letter, or a letter with its own option text ("(C) television"),
    # unless the line before is in the same form (the model listed the options).
    if lines:
        m = _LONE_LETTER_RE.match(lines[-1])
        if m:
            letter = (m.group(1) or m.group(2)).upper()
            rest = m.group(3)
            own_text = rest is None or (
                choices
                and letter in letters
                and _norm_text(rest) == _norm_text(choices[letters.index(letter)])
            )
            listed = len(lines) > 1 and re.match(r"^[\s#>*_-]*\(?[A-Za-z][).:]\s", lines[-2])
            # A lone letter after a list of options is still the pick; "(E) blotter" is not.
            if letter in letters and (rest is None or (own_text and not listed)):
                return letter
    # "At the end of the game, Alice has the blue ball." names one option after a conclusion cue.
    if choices:
        sentence = _last_sentence(text)
        if _CONCLUSION_CUE_RE.match(sentence) and not _NEGATION_RE.search(sentence):
            indices = {i for _, _, i in _mentioned_choices(sentence, choices)}
            if len(indices) == 1:
                return CHOICE_LETTERS[indices.pop()]
    return None


# ----------------------------------------------------------------------------------------------
# yes / no

_YES_WORDS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def _yes_no_from_span(span: str) -> str | None:
    # An echoed "Yes or no:" from the question is no answer.
    sentence = re.sub(r"\byes\s*(?:or|/)\s*no\b", "", _first_sentence(span).lower())
    m = re.search(r"\b(yes|no)\b", sentence) or re.search(r"\b(true|false)\b", sentence)
    if m:
        return _YES_WORDS[m.group(1)]
    # Coin Flip asks "Is the coin still heads up?"
    if re.search(r"\bnot\s+(?:still\s+)?heads\b|\btails\b", sentence):
        return "no"
    if re.search(r"\bheads\b", sentence):
        return "yes"
    return None


_COIN_STATE_RE = re.compile(
    r"(?:^|\b(?:so|thus|therefore|hence|finally|in\s+the\s+end|at\s+the\s+end)\b[\s,]*)"
    r"(?:the\s+coin|it)\s+(?:is|was|will\s+be|would\s+be|remains|ends\s+up|lands)\s+"
    r"(?:now\s+|still\s+)?(not\s+)?(?:still\s+)?(heads|tails)\b",
    re.I,
)


def _yes_no_fallback(text: str) -> str | None:
    sentence = _last_sentence(text)
    cue = r"(?:so|thus|therefore|hence|overall|in\s+conclusion|in\s+summary|in\s+short|finally|answer)?"
    m = re.match(r"^[\s*_#>-]*" + cue + r"[\s,:]*(yes|no)\s*(?:[.,!;:)]|$)", sentence, re.I)
    if m:
        return m.group(1).lower()
    # Coin Flip asks "Is the coin still heads up?": "So the coin is now tails up." answers it.
    m = _COIN_STATE_RE.search(sentence.strip(" *_#>-"))
    if m:
        return "yes" if m.group(2).lower() == "heads" and not m.group(1) else "no"
    m = re.match(r"^[\s*_#>\"-]*(yes|no)\s*(?:[.,!;:]|$)", text, re.I)
    if m:
        return m.group(1).lower()
    return None


# ----------------------------------------------------------------------------------------------
# text

_QUOTED_RE = re.compile(r"\"([^\"\n]+)\"|'([^'\n]+)'|`([^`\n]+)`")
_FILLER_WORDS = {"that", "the", "to", "simply", "just", "therefore", "thus", "so", "string", "word"}


def _text_from_span(span: str) -> str | None:
    line = re.sub(r"^[\s:=>*_#\-]+", "", span)
    m = _QUOTED_RE.match(line)
    if m:
        return _strip_text(next(g for g in m.groups() if g)) or None
    token = _strip_text(line.split()[0]) if line.split() else ""
    if token.lower() in _FILLER_WORDS:
        m = _QUOTED_RE.search(_first_sentence(line))
        return (_strip_text(next(g for g in m.groups() if g)) or None) if m else None
    return token or None


def _strip_text(text: str) -> str:
    return text.strip().strip("\"'`*_()[]").rstrip(".,;:!?").strip("\"'`*_()[]").strip()


# ----------------------------------------------------------------------------------------------
# public API


def extract_answer(text: str, answer_type: str, choices: Sequence[str] = ()) -> str | None:
    """The final answer stated in `text`, normalised like gold (canonical number, upper-case choice
    letter, "yes"/"no", stripped text), or None when the text states none. `choices` (option texts
    in letter order) lets a choice answer be given by its text."""
    _check_type(answer_type)
    if not text or not text.strip():
        return None
    text = _cut_new_question(_clean(text))
    choices = _choice_texts(choices)
    letters = CHOICE_LETTERS[: len(choices)] if choices else DEFAULT_CHOICE_LETTERS

    for span in _spans(text, answer_type):
        if re.match(r"not\b", _strip_span_start(span), re.I):
            # "The answer is not 10, it is 11": a denial, unless an option itself says "not hungry".
            answer = _negative_option(span, choices) if answer_type == "choice" else None
        elif answer_type == "number":
            answer = _number_from_span(span)
        elif answer_type == "choice":
            answer = _choice_from_span(span, letters, choices)
        elif answer_type == "yes_no":
            answer = _yes_no_from_span(span)
        else:
            answer = _text_from_span(span)
        if answer is not None:
            return answer

    if answer_type == "number":
        return _number_fallback(text)
    if answer_type == "choice":
        return _choice_fallback(text, letters, choices)
    if answer_type == "yes_no":
        return _yes_no_fallback(text)
    return None


def _numbers_close(a: str, b: str) -> bool:
    """Canonical numbers: integers exactly (1000001 is not 1000000), others within 1e-6 relative
    (0.3333333333 is 1/3)."""
    if re.fullmatch(r"-?\d+", a) and re.fullmatch(r"-?\d+", b):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def answers_match(prediction: str | None, gold: str, answer_type: str) -> bool:
    """Whether a (normalised) prediction equals the gold answer: integers exactly, other numbers
    within a relative tolerance of 1e-6, choice letters and yes/no case-insensitively, text exactly.
    Raises ValueError when `gold` is no answer of the type."""
    _check_type(answer_type)
    if prediction is None:
        return False
    gold = normalize_gold(gold, answer_type)
    prediction = str(prediction).strip()
    if answer_type == "number":
        try:
            return _numbers_close(canonical_number(prediction), gold)
        except ValueError:
            return False
    if answer_type == "choice":
        return prediction.strip("()").upper() == gold
    if answer_type == "yes_no":
        return _YES_WORDS.get(prediction.lower().rstrip(".")) == gold
    return prediction == gold


def normalize_gold(raw, answer_type: str, choices: Sequence[str] = ()) -> str:
    """Gold answer in normal form: canonical number, upper-case letter (a choice may be given by its
    text when `choices` are), "yes"/"no" (from "Yes", "no", True, ...), stripped text.
    Raises ValueError when `raw` cannot be read as an answer of that type."""
    _check_type(answer_type)
    if answer_type == "number":
        if isinstance(raw, str):
            raw = raw.strip().removeprefix("####").strip().rstrip("%")
        try:
            return canonical_number(raw)
        except ValueError:
            raise ValueError(f"gold {raw!r} is not a number") from None
    if answer_type == "yes_no":
        if isinstance(raw, bool):
            return "yes" if raw else "no"
        word = _YES_WORDS.get(str(raw).strip().rstrip(".").lower()) if isinstance(raw, str) else None
        if word is None:
            raise ValueError(f"gold {raw!r} is not yes/no")
        return word
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"gold {raw!r} is not a non-empty string")
    if answer_type == "text":
        return raw.strip()
    # choice
    choices = _choice_texts(choices)
    letters = CHOICE_LETTERS[: len(choices)] if choices else CHOICE_LETTERS
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?\s*", raw)
    if m:
        letter = m.group(1).upper()
        if letter not in letters:
            raise ValueError(f"gold letter {raw!r} is not among the options {letters[0]}-{letters[-1]}")
        return letter
    for i, choice in enumerate(choices):
        if _norm_text(choice) == _norm_text(raw):
            return CHOICE_LETTERS[i]
    where = f"the options {list(choices)}" if choices else "no options were given"
    raise ValueError(f"gold {raw!r} is neither a letter nor the text of an option ({where})")


def format_answer_line(answer: str, answer_type: str) -> str:
    """The final-answer line our prompts ask for: "The answer is 42." / "The answer is C." /
    "The answer is yes." / "The answer is yajo."."""
    value = normalize_gold(answer, answer_type)
    if answer_type == "text" and "\n" in value:
        raise ValueError(f"text answer {answer!r} spans several lines")
    return f"{ANSWER_PREFIX} {value}."


def check_answer(text: str, example: Example) -> tuple[str | None, bool]:
    """(extracted answer, whether it matches the example's gold)."""
    prediction = extract_answer(text, example.answer_type, example.choices)
    return prediction, answers_match(prediction, example.gold, example.answer_type)


def parse_choices_from_question(question: str) -> tuple[str, ...]:
    """Option texts written into a question: "Answer choices: (A) x, (B) y, (C) z." or
    "(A) x (B) y", or one "A) x" / "A. x" per line. Returns () when there are none."""
    markers = list(re.finditer(r"\(([A-Z])\)", question))
    # The options are the last run of markers (A), (B), ... in order; "(A)" may occur earlier too.
    best: list[re.Match] = []
    run: list[re.Match] = []
    for m in markers:
        if m.group(1) == "A":
            run = [m]
        elif run and m.group(1) == CHOICE_LETTERS[len(run)]:
            run.append(m)
        else:
            run = []
        if len(run) >= 2:
            best = list(run)
    if not best:
        # One option per line: "A) x" / "A. x" / "A: x".
        lines = list(re.finditer(r"^[ \t]*\(?([A-Z])[).:][ \t]+(.+)$", question, re.M))
        for start in range(len(lines)):
            if lines[start].group(1) != "A":
                continue
            run_lines = [lines[start]]
            for m in lines[start + 1 :]:
                if m.group(1) != CHOICE_LETTERS[len(run_lines)]:
                    break
                run_lines.append(m)
            if len(run_lines) >= 2:
                return tuple(_clean_option(m.group(2)) for m in run_lines)
        return ()
    texts = []
    for k, m in enumerate(best):
        end = best[k + 1].start() if k + 1 < len(best) else len(question)
        part = question[m.end() : end]
        if k + 1 == len(best):
            part = part.split("\n", 1)[0]
        texts.append(_clean_option(part))
    return tuple(texts)


def _clean_option(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+or$", "", text)  # "(D) x, or (E) y"
    return re.sub(r"[\s,.]+$", "", text)  # separators and the question's final "."


# ----------------------------------------------------------------------------------------------
# scoring a file of outputs (`sml score`)


@dataclass
class ScoreConfig:
    """Score a JSONL file of model outputs against gold answers."""

    input: str = field(
        default="",
        metadata={
            "help": "JSONL file (required), one object per line with `output` (model text) and `gold`; "
            "optional `question` (choice options are parsed from it), `choices` (list of option texts), "
            "and `dataset`/`answer_type` when not set here."
        },
    )
    output: str | None = field(
        default=None,
        metadata={
            "help": "Scored JSONL to write: each input line plus `prediction` and `correct`. Unset: no file."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Built-in dataset key; sets the answer type.",
            "choices": list(BUILTIN_ANSWER_TYPES),
        },
    )
    answer_type: str | None = field(
        default=None,
        metadata={"help": "Answer type when no dataset is given.", "choices": list(ANSWER_TYPES)},
    )

    def __post_init__(self):
        if not self.input:
            raise ValueError("input: the JSONL file of outputs to score is required")
        if self.dataset is not None and self.dataset not in BUILTIN_ANSWER_TYPES:
            raise ValueError(
                f"dataset: unknown key {self.dataset!r}; expected one of {list(BUILTIN_ANSWER_TYPES)}"
            )
        if self.answer_type is not None and self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type: unknown {self.answer_type!r}; expected one of {ANSWER_TYPES}")
        if self.dataset and self.answer_type and BUILTIN_ANSWER_TYPES[self.dataset] != self.answer_type:
            raise ValueError(
                f"answer_type {self.answer_type!r} contradicts dataset {self.dataset!r} "
                f"(whose answer type is {BUILTIN_ANSWER_TYPES[self.dataset]!r})"
            )


def _row_answer_type(config: ScoreConfig, row: dict, where: str) -> str:
    if config.answer_type:
        return config.answer_type
    if config.dataset:
        return BUILTIN_ANSWER_TYPES[config.dataset]
    if row.get("answer_type") in ANSWER_TYPES:
        return row["answer_type"]
    if row.get("dataset") in BUILTIN_ANSWER_TYPES:
        return BUILTIN_ANSWER_TYPES[row["dataset"]]
    raise ValueError(
        f"{where}: no answer type: pass a dataset or answer_type, or give the line an `answer_type` "
        f"({', '.join(ANSWER_TYPES)}) or a built-in `dataset`"
    )


def score_file(config: ScoreConfig) -> dict:
    """Extract and check the answer of every line of `config.input`; write the scored lines to
    `config.output` (atomically) when set. Returns {"n", "n_correct", "accuracy", "n_no_answer"}.
    Raises ValueError naming file:line for a bad line; nothing is written then."""
    path = Path(config.input)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    scored = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("output", "gold"):
                if key not in row:
                    raise ValueError(f"{where}: missing key {key!r}")
            if not isinstance(row["output"], str):
                raise ValueError(
                    f"{where}: key 'output' must be a string, got {type(row['output']).__name__}"
                )
            answer_type = _row_answer_type(config, row, where)
            choices: Sequence = ()
            if answer_type == "choice":
                if row.get("choices"):
                    if not isinstance(row["choices"], list):
                        raise ValueError(f"{where}: key 'choices' must be a list of option texts")
                    choices = _choice_texts(row["choices"])
                elif isinstance(row.get("question"), str):
                    choices = parse_choices_from_question(row["question"])
            try:
                gold = normalize_gold(row["gold"], answer_type, choices)
            except ValueError as e:
                raise ValueError(f"{where}: key 'gold': {e}") from None
            prediction = extract_answer(row["output"], answer_type, choices)
            scored.append(
                {**row, "prediction": prediction, "correct": answers_match(prediction, gold, answer_type)}
            )

    n = len(scored)
    n_correct = sum(row["correct"] for row in scored)
    summary = {
        "n": n,
        "n_correct": n_correct,
        "accuracy": n_correct / n if n else 0.0,
        "n_no_answer": sum(row["prediction"] is None for row in scored),
    }
    if config.output:
        out = Path(config.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            with tmp.open("w", encoding="utf-8") as f:
                for row in scored:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return summary
