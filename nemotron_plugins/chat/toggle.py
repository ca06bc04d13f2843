"""The reasoning toggle: system prompts, sampling presets and response parsing.

Public API::

    set_reasoning(messages, mode) -> list[dict]       # "on" / "off" (or True / False)
    get_reasoning(messages) -> "on" | "off" | None
    sampling_preset(mode) -> dict                     # on: T 0.6, top_p 0.95; off: greedy
    format_response(answer, reasoning=None, *, mode) -> str
    parse_response(text, mode=None) -> ParsedResponse(reasoning, answer, errors)

Llama-Nemotron models switch reasoning with the system prompt ``detailed thinking on`` / ``detailed thinking off``.
With reasoning on, a response is ``<think>...</think>`` followed by the answer (an empty think block is allowed);
with reasoning off it has no think tags at all.

:func:`parse_response` splits a response the same way the chat templates strip reasoning from history (the answer is
the text after the last ``</think>``) and reports every malformation it finds as ``"code: explanation"`` strings in
``errors``; the codes are the keys of :data:`PARSE_ERRORS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ReasoningMode = Literal["on", "off"]

REASONING_MODES: tuple[str, str] = ("on", "off")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SYSTEM_PROMPTS: dict[str, str] = {"on": "detailed thinking on", "off": "detailed thinking off"}

PARSE_ERRORS: dict[str, str] = {
    "missing_think": "reasoning is on but the response has no <think>...</think> block",
    "think_in_off_mode": "reasoning is off but the response contains think tags",
    "unclosed_think": "a <think> has no matching </think>",
    "nested_think": "a <think> opens inside another think block",
    "unopened_think_close": "a </think> has no matching <think>",
    "multiple_think_blocks": "more than one think block",
    "text_before_think": "text precedes the opening <think>",
    "empty_answer": "no answer text after the reasoning",
}
"""Error codes reported by :func:`parse_response` and what each means."""

_TOGGLE_LINE = re.compile(r"^[ \t]*detailed thinking (on|off)[ \t]*$", re.MULTILINE)
_TAG = re.compile(r"</?think>")


def normalize_mode(mode: str | bool) -> ReasoningMode:
    """Return ``"on"`` or ``"off"`` for a mode given as a string (any case) or a bool.

    Raises:
        ValueError: For anything else.
    """
    if isinstance(mode, bool):
        return "on" if mode else "off"
    if isinstance(mode, str) and mode.strip().lower() in REASONING_MODES:
        return mode.strip().lower()  # type: ignore[return-value]
    raise ValueError(f"reasoning mode must be 'on' or 'off' (or a bool), got {mode!r}")


def reasoning_mode_of(system_text: str) -> ReasoningMode | None:
    """Return the mode a system prompt selects (its last ``detailed thinking on|off`` line), or ``None``."""
    found = _TOGGLE_LINE.findall(system_text or "")
    return found[-1] if found else None  # type: ignore[return-value]


def get_reasoning(messages: Sequence[Mapping[str, Any]]) -> ReasoningMode | None:
    """Return the reasoning mode selected by a conversation's leading system message, or ``None``."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return reasoning_mode_of(messages[0]["content"])
    return None


def set_reasoning(messages: Sequence[Mapping[str, Any]], mode: str | bool) -> list[dict[str, Any]]:
    """Return a copy of ``messages`` whose system prompt selects reasoning ``mode``.

    A leading system message keeps its other text: any ``detailed thinking on|off`` line is removed and the toggle
    line for ``mode`` is put first, followed by a blank line and the remaining text. Without a leading system
    message, ``{"role": "system", "content": "detailed thinking <mode>"}`` is inserted. The input is not modified.

    Args:
        messages: The conversation.
        mode: ``"on"`` / ``"off"`` (or ``True`` / ``False``).

    Returns:
        A new list of new message dicts.

    Example:
        >>> set_reasoning([{"role": "system", "content": "Be brief."}], "on")[0]["content"]
        'detailed thinking on\\n\\nBe brief.'
    """
    toggle = SYSTEM_PROMPTS[normalize_mode(mode)]
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        content = out[0].get("content")
        if not isinstance(content, str):
            raise ValueError(f"messages[0].content must be a string, got {type(content).__name__}")
        rest = _TOGGLE_LINE.sub("", content).strip()
        rest = re.sub(r"\n{3,}", "\n\n", rest)
        out[0]["content"] = f"{toggle}\n\n{rest}" if rest else toggle
    else:
        out.insert(0, {"role": "system", "content": toggle})
    return out


def sampling_preset(mode: str | bool) -> dict[str, Any]:
    """Return the recommended sampling settings for a reasoning mode.

    ``on``: temperature 0.6, top_p 0.95 (sampling); ``off``: greedy decoding. The keys fit
    ``transformers.GenerationConfig`` and vLLM ``SamplingParams`` (temperature 0 means greedy there).

    Example:
        >>> sampling_preset("on")
        {'do_sample': True, 'temperature': 0.6, 'top_p': 0.95}
    """
    if normalize_mode(mode) == "on":
        return {"do_sample": True, "temperature": 0.6, "top_p": 0.95}
    return {"do_sample": False, "temperature": 0.0, "top_p": 1.0}


def format_response(answer: str, reasoning: str | None = None, *, mode: str | bool) -> str:
    """Build a response in the canonical format of a mode.

    ``on``: ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (``<think>\\n</think>\\n\\n{answer}`` when the reasoning
    is empty); ``off``: the answer alone.

    Raises:
        ValueError: If reasoning is given with mode ``off``, or the texts already contain think tags.
    """
    resolved = normalize_mode(mode)
    for name, text in (("answer", answer), ("reasoning", reasoning or "")):
        if _TAG.search(text):
            raise ValueError(f"{name} must not contain think tags: {text[:80]!r}")
    if resolved == "off":
        if reasoning:
            raise ValueError("reasoning text cannot be kept with reasoning mode 'off'")
        return answer.strip()
    body = (reasoning or "").strip()
    return f"{THINK_OPEN}\n{body + chr(10) if body else ''}{THINK_CLOSE}\n\n{answer.strip()}"


@dataclass(slots=True)
class ParsedResponse:
    """A response split into reasoning and answer."""

    reasoning: str | None
    """Text inside the think block (stripped); ``None`` when the response has no think tags."""
    answer: str
    """Text after the last ``</think>`` (the whole response when there are no tags), stripped."""
    errors: list[str] = field(default_factory=list)
    """``"code: explanation"`` strings; codes are keys of :data:`PARSE_ERRORS`. Empty when well formed."""

    @property
    def ok(self) -> bool:
        """Whether the response is well formed for the mode it was parsed with."""
        return not self.errors

    @property
    def error_codes(self) -> list[str]:
        """The codes of :attr:`errors`, in order."""
        return [e.split(":", 1)[0] for e in self.errors]


def _error(code: str, detail: str = "") -> str:
    return f"{code}: {PARSE_ERRORS[code]}" + (f" ({detail})" if detail else "")


def parse_response(text: str, mode: str | bool | None = None) -> ParsedResponse:
    """Split a model response into reasoning and answer and report malformed think tags.

    Args:
        text: The generated response (without the chat template around it).
        mode: ``"on"`` requires a think block at the start; ``"off"`` forbids think tags; ``None`` accepts both.

    Returns:
        A :class:`ParsedResponse`. The answer is always the text after the last ``</think>`` (what the chat templates
        keep in history); with an unclosed ``<think>`` the answer is empty and the reasoning runs to the end.

    Example:
        >>> parse_response("<think>\\n2+2=4\\n</think>\\n\\n4", mode="on")
        ParsedResponse(reasoning='2+2=4', answer='4', errors=[])
    """
    if not isinstance(text, str):
        raise TypeError(f"response text must be a string, got {type(text).__name__}")
    resolved = normalize_mode(mode) if mode is not None else None
    tags = [(m.start(), m.group()) for m in _TAG.finditer(text)]
    errors: list[str] = []
    if not tags:
        if resolved == "on":
            errors.append(_error("missing_think"))
        answer = text.strip()
        if not answer:
            errors.append(_error("empty_answer"))
        return ParsedResponse(reasoning=None, answer=answer, errors=errors)

    if resolved == "off":
        errors.append(_error("think_in_off_mode", f"{len(tags)} tag(s)"))
    depth = 0
    blocks = 0
    nested = stray = False
    for pos, tag in tags:
        if tag == THINK_OPEN:
            if depth > 0 and not nested:
                nested = True
                errors.append(_error("nested_think", f"at offset {pos}"))
            depth += 1
        elif depth == 0:
            if not stray:
                stray = True
                errors.append(_error("unopened_think_close", f"at offset {pos}"))
        else:
            depth -= 1
            blocks += depth == 0
    if depth > 0:
        errors.append(_error("unclosed_think", f"{depth} open"))
    if blocks > 1:
        errors.append(_error("multiple_think_blocks", f"{blocks} blocks"))
    first_open = text.find(THINK_OPEN)
    if first_open > 0 and text[:first_open].strip():
        errors.append(_error("text_before_think", repr(text[:first_open].strip()[:40])))

    if depth > 0:
        reasoning = text[first_open + len(THINK_OPEN) :].strip()
        answer = ""
    else:
        last_close = text.rfind(THINK_CLOSE)
        start = first_open + len(THINK_OPEN) if -1 < first_open < last_close else 0
        reasoning = text[start:last_close].strip()
        answer = text[last_close + len(THINK_CLOSE) :].strip()
    if not answer:
        errors.append(_error("empty_answer"))
    return ParsedResponse(reasoning=reasoning, answer=answer, errors=errors)
