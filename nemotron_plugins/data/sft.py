"""SFT examples from Llama-Nemotron-Post-Training-Dataset rows: prompt + target, loss mask, on/off pairs.

Public API::

    build_sft_examples(rows, tokenizer, *, max_seq_len, strict=False, template="llama-nemotron-super")
        -> (list[SFTExample], DataReport)
    load_sft_examples(path, tokenizer, *, max_seq_len, strict=False, split="train") -> (examples, report)
    SFTExample(input_ids, loss_mask, prompt_length, reasoning, line, category, prompt_key)
    find_on_off_pairs(examples) -> list[tuple[SFTExample, SFTExample]]
    prompt_messages(row) -> list[dict]
    row_tools(row) -> list[dict] | None

How an example is built from a row:

1. the prompt conversation is ``input`` with ``system_prompt`` as its system turn (when ``input`` already starts
   with a system message, that text is kept after the toggle, see :func:`nemotron_plugins.chat.toggle.set_reasoning`);
2. the prompt text is the chat template rendered with ``add_generation_prompt=True`` (earlier assistant turns of a
   multi-turn ``input`` lose their reasoning, as at inference); a row's ``tools`` (JSON-schema tool objects, see
   :func:`row_tools`) are rendered by the template into the system turn (``<AVAILABLE_TOOLS>`` of
   ``llama-nemotron-nano``; a template without tools refuses the row);
3. the target text is ``output`` (stripped, its ``<think>`` block kept) followed by ``<|eot_id|>``;
4. ``input_ids`` = prompt tokens + target tokens (each encoded without added special tokens; the rendered prompt
   carries its own bos), ``loss_mask`` is 0 on the prompt and 1 on every target token including the final
   ``<|eot_id|>``. Both are unshifted; :func:`nemotron_plugins.data.packing.pack_examples` makes next-token labels.

Bad rows are skipped and counted per reason in a :class:`~nemotron_plugins.data.report.DataReport` (reason codes
in :data:`~nemotron_plugins.data.report.SKIP_REASONS`), or raise :class:`~nemotron_plugins.data.report.BadRowError`
with ``strict=True``. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nemotron_plugins.chat.render import DEFAULT_TEMPLATE, EOT_TOKEN, ChatTemplateError, render_chat, validate_messages
from nemotron_plugins.chat.toggle import SYSTEM_PROMPTS, parse_response, reasoning_mode_of, set_reasoning
from nemotron_plugins.data.report import BadRowError, DataReport
from nemotron_plugins.data.rows import REQUIRED_FIELDS, RawRow, read_rows


@dataclass(slots=True)
class SFTExample:
    """One tokenized SFT example (unshifted tokens and a per-token loss mask)."""

    input_ids: list[int]
    """Prompt tokens followed by target tokens (the last one is ``<|eot_id|>``)."""
    loss_mask: list[int]
    """1 on target tokens (including the final ``<|eot_id|>``), 0 on prompt tokens; same length as ``input_ids``."""
    prompt_length: int
    """Number of prompt tokens (the first target token is at this index)."""
    reasoning: str
    """``"on"`` or ``"off"``."""
    line: int = 0
    """Line number / row index of the source row."""
    category: str | None = None
    """The row's ``category`` (math, code, ...), when present."""
    prompt_key: str = ""
    """Hash of the conversation without its system turn: equal for the on/off pair of one prompt."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_ids(self) -> list[int]:
        """The target tokens."""
        return self.input_ids[self.prompt_length :]


class _RowProblem(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def prompt_messages(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the prompt conversation of a row: ``input`` with ``system_prompt`` as its system turn.

    ``input`` given as a plain string is taken as one user message.
    """
    messages = row["input"]
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = [dict(m) if isinstance(m, Mapping) else m for m in messages]
    system_prompt = (row.get("system_prompt") or "").strip()
    mode = reasoning_mode_of(system_prompt)
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        if mode is not None and system_prompt == SYSTEM_PROMPTS[mode]:
            return set_reasoning(messages, mode)
        inner = str(messages[0].get("content") or "").strip()
        merged = "\n\n".join(t for t in (system_prompt, inner) if t)
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def row_tools(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The row's ``tools`` column: JSON-schema tool objects for the chat template's system turn, or ``None``.

    The column may hold a list of objects or that list as a JSON string (as Hugging Face datasets often store it).

    Raises:
        ValueError: If ``tools`` is neither, naming the field and what was found.

    Example:
        >>> row_tools({"tools": '[{"name": "add"}]'})
        [{'name': 'add'}]
    """
    tools = row.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise ValueError(f"'tools' is a string but not JSON: {exc}") from None
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise ValueError(f"'tools' must be a list of JSON-schema tool objects, got {str(tools)[:60]!r}")
    return [dict(t) for t in tools]


def _prompt_key(messages: list[dict[str, Any]]) -> str:
    body = [m for m in messages if m.get("role") != "system"]
    return hashlib.sha1(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _check_row(row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str, str, list[dict[str, Any]] | None]:
    """Validate a row; return (prompt messages, target text, reasoning, tools) or raise _RowProblem."""
    for name in REQUIRED_FIELDS:
        if row.get(name) is None:
            present = ", ".join(sorted(row)) or "(none)"
            raise _RowProblem("missing_field", f"field {name!r} is missing or null (fields present: {present})")
    if not isinstance(row["input"], list | str):
        raise _RowProblem("bad_field", f"'input' must be a list of messages, got {type(row['input']).__name__}")
    for name in ("output", "system_prompt", "reasoning"):
        if not isinstance(row[name], str):
            raise _RowProblem("bad_field", f"{name!r} must be a string, got {type(row[name]).__name__}")
    reasoning = row["reasoning"].strip().lower()
    if reasoning not in ("on", "off"):
        raise _RowProblem("bad_reasoning_value", f"'reasoning' is {row['reasoning']!r}; valid: 'on', 'off'")
    system_mode = reasoning_mode_of(row["system_prompt"])
    if system_mode != reasoning:
        raise _RowProblem(
            "reasoning_mismatch",
            f"reasoning is {reasoning!r} but system_prompt {row['system_prompt'][:60]!r} selects "
            f"{system_mode if system_mode else 'no mode'} (expected a line 'detailed thinking {reasoning}')",
        )
    try:
        messages = validate_messages(prompt_messages(row))
    except (ChatTemplateError, TypeError, AttributeError) as exc:
        raise _RowProblem("bad_messages", f"input: {exc}") from None
    if messages[-1]["role"] != "user":
        raise _RowProblem("bad_messages", f"the last input message must be a user turn, got {messages[-1]['role']!r}")
    output = row["output"].strip()
    if output.endswith(EOT_TOKEN):
        output = output[: -len(EOT_TOKEN)].rstrip()
    if not output:
        raise _RowProblem("empty_output", "'output' is empty")
    parsed = parse_response(output, mode=reasoning)
    codes = parsed.error_codes
    if "missing_think" in codes:
        raise _RowProblem("missing_think", f"reasoning is on but output has no think block: {output[:60]!r}")
    if "think_in_off_mode" in codes:
        raise _RowProblem("think_in_off_mode", f"reasoning is off but output has think tags: {output[:60]!r}")
    if codes:
        raise _RowProblem("malformed_think", "; ".join(parsed.errors))
    try:
        tools = row_tools(row)
    except ValueError as exc:
        raise _RowProblem("bad_field", str(exc)) from None
    return messages, output, reasoning, tools


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_sft_examples(
    rows: Iterable[Mapping[str, Any] | RawRow],
    tokenizer: Any,
    *,
    max_seq_len: int,
    strict: bool = False,
    template: str = DEFAULT_TEMPLATE,
) -> tuple[list[SFTExample], DataReport]:
    """Turn Post-Training-Dataset rows into tokenized SFT examples with a loss mask on the target only.

    Args:
        rows: Row dicts (numbered 1, 2, ... in order) or :class:`~nemotron_plugins.data.rows.RawRow` objects from
            :func:`~nemotron_plugins.data.rows.read_rows` (numbered by source line).
        tokenizer: A Hugging Face tokenizer in which ``<|eot_id|>`` is one token (e.g.
            :func:`nemotron_plugins.chat.tokenizer.build_tiny_tokenizer`).
        max_seq_len: Longest allowed prompt + target, in tokens; longer rows are skipped as ``too_long``.
        strict: Raise :class:`~nemotron_plugins.data.report.BadRowError` on the first bad row instead of skipping.
        template: Registered chat template used to render prompts.

    Returns:
        ``(examples, report)``: the examples in row order and the per-reason counts.

    Raises:
        BadRowError: In strict mode, naming the line, the reason and what is wrong.
        ValueError: If ``max_seq_len`` < 2 or ``<|eot_id|>`` is not a single token of ``tokenizer``.
    """
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    eot_ids = _encode(tokenizer, EOT_TOKEN)
    if len(eot_ids) != 1:
        raise ValueError(f"tokenizer encodes {EOT_TOKEN!r} as {len(eot_ids)} tokens; it must be one special token")
    bos_token = getattr(tokenizer, "bos_token", None) or "<|begin_of_text|>"
    report = DataReport()
    examples: list[SFTExample] = []
    for position, item in enumerate(rows, start=1):
        report.total += 1
        if isinstance(item, RawRow):
            line, row, error = item.line, item.row, item.error
        else:
            line, row, error = position, item, None
        try:
            if row is None or not isinstance(row, Mapping):
                raise _RowProblem("bad_json", error or f"row is not an object: {type(row).__name__}")
            messages, output, reasoning, tools = _check_row(row)
            try:
                prompt = render_chat(
                    messages, template=template, add_generation_prompt=True, bos_token=bos_token, tools=tools
                )
            except ChatTemplateError as exc:
                raise _RowProblem("bad_messages", f"template {template!r}: {exc}") from None
            prompt_ids = _encode(tokenizer, prompt)
            target_ids = _encode(tokenizer, output + EOT_TOKEN)
            length = len(prompt_ids) + len(target_ids)
            if length > max_seq_len:
                raise _RowProblem(
                    "too_long",
                    f"{length} tokens ({len(prompt_ids)} prompt + {len(target_ids)} target) > {max_seq_len}",
                )
        except _RowProblem as problem:
            if strict:
                raise BadRowError(line, problem.reason, problem.detail) from None
            report.skip(line, problem.reason, problem.detail)
            continue
        category = row.get("category")
        examples.append(
            SFTExample(
                input_ids=prompt_ids + target_ids,
                loss_mask=[0] * len(prompt_ids) + [1] * len(target_ids),
                prompt_length=len(prompt_ids),
                reasoning=reasoning,
                line=line,
                category=category if isinstance(category, str) else None,
                prompt_key=_prompt_key(messages),
            )
        )
        report.kept += 1
    return examples, report


def load_sft_examples(
    path: str | os.PathLike[str],
    tokenizer: Any,
    *,
    max_seq_len: int,
    strict: bool = False,
    split: str = "train",
    template: str = DEFAULT_TEMPLATE,
) -> tuple[list[SFTExample], DataReport]:
    """Read a local source with :func:`~nemotron_plugins.data.rows.read_rows` and build its examples."""
    return build_sft_examples(
        read_rows(path, split=split), tokenizer, max_seq_len=max_seq_len, strict=strict, template=template
    )


def find_on_off_pairs(examples: Iterable[SFTExample]) -> list[tuple[SFTExample, SFTExample]]:
    """Return ``(on, off)`` example pairs that share one prompt (first of each mode per prompt, in order)."""
    by_key: dict[str, dict[str, SFTExample]] = {}
    order: list[str] = []
    for example in examples:
        modes = by_key.setdefault(example.prompt_key, {})
        if not modes:
            order.append(example.prompt_key)
        modes.setdefault(example.reasoning, example)
    return [(by_key[k]["on"], by_key[k]["off"]) for k in order if {"on", "off"} <= by_key[k].keys()]
