"""``tool_call``: Tool-N1's binary tool-calling reward.

The reply must contain ``<think>`` and, after it, ``</think>``. Every complete tool-call block after the reasoning,
``<tool_call>...</tool_call>`` (Tool-N1 / Hermes style) or ``<TOOLCALL>[...]</TOOLCALL>`` (the Nano chat template),
is parsed as JSON: a list of calls, or a single call object (a one-element list); the calls of all blocks together
are the reply's calls, so parallel calls written one block each (Hermes) or in one list are the same. An explicit empty list ``[]``
means "no call" and matches an empty ground truth. Every call needs a string ``name`` and an object ``arguments``
(a JSON string holding an object is decoded, as in OpenAI's API); other keys are ignored.

The score is 1.0 only when the multiset of ``(name, arguments)`` equals the ground truth's: call order and key order
are ignored, values are compared exactly *with their JSON types*: ``"5" != 5``, ``5 != 5.0``, ``true != 1``, and
list order matters.

Ground truth: the same call forms as a Python value (list / dict) or a JSON string. A malformed ground truth is
reported as invalid input, never raised.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from nemotron_plugins.rewards.base import RewardResult, RewardSample, SampleReward
from nemotron_plugins.rewards.text import THINK_CLOSE, THINK_OPEN


class ToolCallFormatError(ValueError):
    """Tool calls are not in the expected shape."""


def canonical(value: Any) -> Any:
    """A hashable, type-tagged form of a JSON value: dict key order ignored, list order and types kept.

    Example:
        >>> canonical({"b": 5, "a": [1, "1"]}) == canonical({"a": [1, "1"], "b": 5})
        True
        >>> canonical(5) == canonical(5.0), canonical(True) == canonical(1)
        (False, False)
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null",)
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("array", tuple(canonical(v) for v in value))
    raise ToolCallFormatError(f"unsupported value type {type(value).__name__}")


def normalize_calls(calls: Any, *, where: str) -> Counter:
    """The multiset of ``(name, canonical arguments)`` of ``calls`` (a list of call objects or one call object)."""
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise ToolCallFormatError(
            f"{where}: expected a list of tool calls or one call object, got {type(calls).__name__}"
        )
    out: Counter = Counter()
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise ToolCallFormatError(f"{where}[{i}]: a tool call must be an object, got {type(call).__name__}")
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise ToolCallFormatError(f"{where}[{i}]: 'name' must be a non-empty string, got {name!r}")
        if "arguments" not in call:
            raise ToolCallFormatError(f"{where}[{i}] ({name}): missing 'arguments'")
        args = call["arguments"]
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                raise ToolCallFormatError(f"{where}[{i}] ({name}): 'arguments' string is not JSON: {exc}") from exc
        if not isinstance(args, dict):
            raise ToolCallFormatError(
                f"{where}[{i}] ({name}): 'arguments' must be an object, got {type(args).__name__}"
            )
        out[(name, canonical(args))] += 1
    return out


def last_tool_block(text: str) -> str | None:
    """The content of the last complete ``<tool_call>``/``<TOOLCALL>`` block, or ``None`` (linear time).

    Example:
        >>> last_tool_block('<TOOLCALL>[]</TOOLCALL> <tool_call>{"name": "f", "arguments": {}}</tool_call>')
        '{"name": "f", "arguments": {}}'
    """
    best: tuple[int, str] | None = None
    for open_tag, close_tag in (("<tool_call>", "</tool_call>"), ("<TOOLCALL>", "</TOOLCALL>")):
        close_at = text.rfind(close_tag)
        if close_at < 0:
            continue
        open_at = text.rfind(open_tag, 0, close_at)
        if open_at < 0:
            continue
        if best is None or close_at > best[0]:
            best = (close_at, text[open_at + len(open_tag) : close_at])
    return best[1] if best else None


def tool_blocks(text: str, *, max_blocks: int = 64) -> list[str]:
    """The contents of every complete ``<tool_call>``/``<TOOLCALL>`` block, in order (linear time, at most
    ``max_blocks``).

    Example:
        >>> tool_blocks('<tool_call>{"name": "a", "arguments": {}}</tool_call> <tool_call>[]</tool_call>')
        ['{"name": "a", "arguments": {}}', '[]']
    """
    found: list[tuple[int, str]] = []
    for open_tag, close_tag in (("<tool_call>", "</tool_call>"), ("<TOOLCALL>", "</TOOLCALL>")):
        pos = 0
        while len(found) <= max_blocks:
            open_at = text.find(open_tag, pos)
            if open_at < 0:
                break
            close_at = text.find(close_tag, open_at + len(open_tag))
            if close_at < 0:
                break
            found.append((open_at, text[open_at + len(open_tag) : close_at]))
            pos = close_at + len(close_tag)
    found.sort(key=lambda item: item[0])
    return [content for _, content in found]


class ToolCallReward(SampleReward):
    """Tool-N1's binary reward: format (think tags + a parsable call block) and an exact multiset match.

    Args:
        require_think: Require ``<think>`` ... ``</think>`` (Tool-N1). Set False for "off"-mode data.
        max_block_chars: Bound on the JSON blocks' total size.
        max_blocks: Bound on the number of blocks.

    Components: ``format`` (think tags and a well-formed call block), ``calls_match``.

    Example:
        >>> r = ToolCallReward()
        >>> reply = '<think>need weather</think><tool_call>[{"name": "weather", "arguments": {"city": "Paris"}}]</tool_call>'
        >>> [x.score for x in r.score([RewardSample(completion=reply, ground_truth=[{"name": "weather", "arguments": {"city": "Paris"}}])])]
        [1.0]
    """

    name = "tool_call"

    def __init__(
        self,
        *,
        require_think: bool = True,
        max_block_chars: int = 100_000,
        max_completion_chars: int = 500_000,
        max_blocks: int = 64,
    ) -> None:
        self.require_think = require_think
        self.max_blocks = max_blocks
        self.max_block_chars = max_block_chars
        self.max_completion_chars = max_completion_chars

    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample."""
        gt = sample.ground_truth
        try:
            if isinstance(gt, str):
                gt = json.loads(gt)
            gold = normalize_calls(gt, where="ground_truth")
        except (json.JSONDecodeError, ToolCallFormatError, RecursionError) as exc:
            return RewardResult.invalid(f"tool_call: malformed ground_truth: {exc}")

        def fail(reason: str) -> RewardResult:
            return RewardResult(score=0.0, components={"format": 0.0, "calls_match": 0.0}, message=reason)

        text = sample.completion
        if self.require_think:
            open_at, close_at = text.find(THINK_OPEN), text.find(THINK_CLOSE)
            if open_at < 0 or close_at < 0 or close_at < open_at:
                return fail("reply needs <think> ... </think>")
            text = text[close_at + len(THINK_CLOSE) :]
        blocks = tool_blocks(text, max_blocks=self.max_blocks)
        if not blocks:
            return fail("no <tool_call> or <TOOLCALL> block")
        if len(blocks) > self.max_blocks:
            return fail(f"more than {self.max_blocks} tool-call blocks")
        size = sum(len(b) for b in blocks)
        if size > self.max_block_chars:
            return fail(f"tool-call blocks have {size} characters (bound {self.max_block_chars})")
        pred: Counter = Counter()
        try:
            for i, block in enumerate(blocks):
                pred += normalize_calls(json.loads(block), where=f"tool_call block {i}")
        except (json.JSONDecodeError, ToolCallFormatError, RecursionError) as exc:
            return fail(f"tool-call block is not valid: {str(exc)[:200]}")
        match = pred == gold
        return RewardResult(score=1.0 if match else 0.0, components={"format": 1.0, "calls_match": float(match)})
