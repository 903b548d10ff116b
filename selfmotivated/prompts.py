"""Prompts: zero-shot and few-shot chain-of-thought, and hinted prompts for rationalisation.

Every prompt asks for one final line "The answer is X." (`answers.ANSWER_PREFIX`), the format the answer
checker reads first. A model with a chat template gets chat messages (few-shot exemplars become earlier
user/assistant turns, the usual way to show a chat model examples); a model without one gets plain
"Q: ...\nA:" text, the Reasoning Teachers / Kojima format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from .records import Example

PROMPT_STYLES = ("zero_shot", "few_shot")
# Plain-text few-shot models tend to continue with the next "Q:" exemplar; stop there.
PLAIN_TEXT_STOP = ("\nQ:",)


@dataclass
class PromptConfig:
    style: str = field(default="zero_shot", metadata={"help": "zero_shot or few_shot chain-of-thought"})
    exemplars: str | None = field(
        default=None,
        metadata={"help": "few-shot exemplars: a JSON file ({key: {'prompt': 'Q: ..\\nA: ..'}} like the shared "
                          "prompts file, or {answer_type: [{question, answer}]} like ours), 'dataset' for the "
                          "shared few-shot prompt of a built-in dataset, or empty for ours (one set per answer type)"},
    )
    num_exemplars: int | None = field(default=None, metadata={"help": "use only the first N exemplars"})
    chat: str = field(default="auto", metadata={"help": "auto (chat template when the tokenizer has one), always, never"})
    templates: str | None = field(default=None, metadata={"help": "JSON file overriding prompt_templates.json"})

    def __post_init__(self):
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {self.style!r}")
        if self.chat not in ("auto", "always", "never"):
            raise ValueError(f"prompt chat must be auto, always or never, got {self.chat!r}")


@lru_cache(maxsize=1)
def _builtin_templates() -> str:
    return resources.files("selfmotivated.resources").joinpath("prompt_templates.json").read_text()


def load_templates(path: str | None = None) -> dict:
    """Our templates, updated with the keys of the user's file when one is given."""
    templates = json.loads(_builtin_templates())
    if path:
        try:
            user = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"prompt templates file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        unknown = set(user) - set(templates)
        if unknown:
            raise ValueError(f"{path}: unknown template keys {sorted(unknown)}; allowed: {sorted(templates)}")
        templates.update(user)
    return templates


def templates_digest(templates: str | dict | None = None) -> str:
    """A short hash of the templates' content (ours updated with the file's): what decides the prompts, so
    stored outputs are reused only when it matches, whatever the file is called."""
    if not isinstance(templates, dict):
        templates = load_templates(templates)
    return hashlib.sha256(json.dumps(templates, sort_keys=True).encode()).hexdigest()[:16]


def format_question(example: Example) -> str:
    """The question text with its answer choices, lettered as the checker expects."""
    if not example.choices:
        return example.question
    options = ", ".join(f"({letter}) {text}" for letter, text in zip(example.choice_letters, example.choices))
    return f"{example.question}\nAnswer choices: {options}."


def parse_plain_exemplars(text: str) -> list[tuple[str, str]]:
    """Split a "Q: ...\\nA: ..." few-shot prompt into (question, answer) pairs."""
    pairs = []
    for block in ("\n" + text.strip()).split("\nQ: ")[1:]:
        question, sep, answer = block.partition("\nA: ")
        if not sep:
            raise ValueError(f"few-shot block without an 'A: ' line: {block[:80]!r}")
        pairs.append((question.strip(), answer.strip()))
    return pairs


def load_exemplars(source: str | None, example: Example, data_dir: str | None = None,
                   num: int | None = None) -> list[tuple[str, str]]:
    """Few-shot (question, answer) pairs for `example`'s dataset or answer type.

    source: None -> ours for the answer type; "dataset" -> the shared prompt file of a built-in dataset;
    a path to a JSON file in either format; or raw "Q: ...\\nA: ..." text.
    """
    if source is None:
        table = json.loads(resources.files("selfmotivated.resources").joinpath("exemplars.json").read_text())
        pairs = [(row["question"], row["answer"]) for row in table[example.answer_type]]
    elif source == "dataset":
        from .data import few_shot_prompt

        text = few_shot_prompt(example.dataset, data_dir=data_dir)
        if text is None:
            raise ValueError(f"no shared few-shot prompt for dataset {example.dataset!r}; use our exemplars "
                             f"(leave --exemplars empty) or pass a JSON file")
        pairs = parse_plain_exemplars(text)
    elif source.lstrip().startswith("Q:"):
        pairs = parse_plain_exemplars(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"exemplars file not found: {source}")
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if example.answer_type in table and isinstance(table[example.answer_type], list):
            pairs = [(row["question"], row["answer"]) for row in table[example.answer_type]]
        elif example.dataset in table and isinstance(table[example.dataset], dict):
            pairs = parse_plain_exemplars(table[example.dataset]["prompt"])
        else:
            raise ValueError(f"{path}: no exemplars for dataset {example.dataset!r} or answer type "
                             f"{example.answer_type!r} (keys: {sorted(k for k in table if not k.startswith('_'))})")
    return pairs[:num] if num else pairs


def use_chat(tokenizer, chat: str = "auto") -> bool:
    if chat == "always":
        return True
    if chat == "never":
        return False
    return getattr(tokenizer, "chat_template", None) is not None


def build_messages(example: Example, style: str = "zero_shot", exemplars: Sequence[tuple[str, str]] = (),
                   hint: str | None = None, templates: dict | None = None) -> list[dict]:
    """Chat messages for one question. With `hint`, the prompt asks for a rationale for that answer."""
    templates = templates or load_templates()
    answer_format = templates["answer_formats"][example.answer_type]
    question = format_question(example)
    if hint is not None:
        return [{"role": "user", "content": templates["hinted"].format(question=question, hint=hint)}]
    if style == "zero_shot":
        return [{"role": "user", "content": templates["zero_shot"].format(question=question,
                                                                          answer_format=answer_format)}]
    if style != "few_shot":
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    intro = templates["few_shot_intro"].format(answer_format=answer_format)
    messages = []
    for i, (q, a) in enumerate(exemplars):
        messages.append({"role": "user", "content": f"{intro}\n\n{q}" if i == 0 else q})
        messages.append({"role": "assistant", "content": a})
    messages.append({"role": "user", "content": question if exemplars else f"{intro}\n\n{question}"})
    return messages


def build_prompt(example: Example, tokenizer, style: str = "zero_shot", exemplars=None, hint: str | None = None,
                 chat: str = "auto", num_exemplars: int | None = None, data_dir: str | None = None,
                 templates: str | dict | None = None) -> str:
    """The full prompt text (chat template applied, or plain Q/A text) ending where the response starts.

    `exemplars` is a source for `load_exemplars` or an already loaded list of (question, answer) pairs.
    """
    if not isinstance(templates, dict):
        templates = load_templates(templates)
    pairs: Sequence[tuple[str, str]] = ()
    if style == "few_shot" and hint is None:
        pairs = exemplars if isinstance(exemplars, list) else load_exemplars(exemplars, example, data_dir,
                                                                             num_exemplars)
    # Zero-shot and hinted replies open with a cue to reason (Kojima et al.); few-shot exemplars show it.
    start = templates.get("response_start", "") if (hint is not None or style == "zero_shot") else ""
    if use_chat(tokenizer, chat):
        messages = build_messages(example, style, pairs, hint=hint, templates=templates)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + start
    # Plain text: "Q: ...\nA:" with exemplars as earlier blocks.
    blocks = [f"Q: {q}\nA: {a}" for q, a in pairs]
    if hint is not None or style == "zero_shot":
        user = build_messages(example, style, hint=hint, templates=templates)[0]["content"]
        blocks.append(f"Q: {user}\nA: {start}".rstrip())
    else:
        blocks.append(f"Q: {format_question(example)}\nA:")
    bos = tokenizer.bos_token if getattr(tokenizer, "bos_token", None) and _adds_bos(tokenizer) else ""
    return bos + "\n".join(blocks)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS token before plain text (generators encode without special tokens)."""
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def stop_strings(tokenizer, chat: str = "auto") -> tuple[str, ...]:
    """Stop strings for generation: plain-text prompts stop at the next exemplar question."""
    return () if use_chat(tokenizer, chat) else PLAIN_TEXT_STOP
