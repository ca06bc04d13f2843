"""Bounded, linear-time text helpers shared by the rewards: think-block splitting and ``\\boxed{}`` extraction.

Nothing here evaluates text; every scan is a single pass with explicit bounds, so hostile completions (huge, deeply
nested, unclosed) cost at most linear time.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True, kw_only=True, slots=True)
class ThinkSplit:
    """A completion split around its reasoning block."""

    reasoning: str | None
    """Text inside ``<think>...</think>`` (``None`` when there is no closed think block)."""
    answer: str
    """Text after the last ``</think>``; the whole completion when it has no think tags; empty when a think block
    was opened but never closed (the model never reached its answer)."""
    has_open: bool
    """The completion contains ``<think>``."""
    has_close: bool
    """The completion contains ``</think>``."""


def split_think(completion: str) -> ThinkSplit:
    """Split ``completion`` into reasoning and final answer.

    Example:
        >>> split_think("<think>2+2=4</think> 4").answer
        ' 4'
    """
    has_open = THINK_OPEN in completion
    close_at = completion.rfind(THINK_CLOSE)
    has_close = close_at >= 0
    if has_close:
        open_at = completion.find(THINK_OPEN)
        start = open_at + len(THINK_OPEN) if 0 <= open_at < close_at else 0
        return ThinkSplit(
            reasoning=completion[start:close_at],
            answer=completion[close_at + len(THINK_CLOSE) :],
            has_open=has_open,
            has_close=True,
        )
    if has_open:
        return ThinkSplit(reasoning=None, answer="", has_open=True, has_close=False)
    return ThinkSplit(reasoning=None, answer=completion, has_open=False, has_close=False)


def last_boxed(text: str, *, max_chars: int = 4096, commands: tuple[str, ...] = ("\\boxed", "\\fbox")) -> str | None:
    """The content of the last balanced ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Scans forward from the last occurrence at most ``max_chars`` characters; an unclosed or over-long box yields
    ``None`` (and the previous box is tried). ``\\boxed 5`` (no braces) yields ``"5"``.
    """
    end = len(text)
    for _ in range(64):  # bounded number of candidate boxes, newest first
        starts = [text.rfind(cmd, 0, end) for cmd in commands]
        start = max(starts)
        if start < 0:
            return None
        cmd = commands[starts.index(start)]
        i = start + len(cmd)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] != "{":
            # "\boxed 5": a single token
            j = i
            while j < len(text) and j - i < 64 and not text[j].isspace() and text[j] not in "$":
                j += 1
            if j > i:
                return text[i:j]
        elif i < len(text):
            content = balanced_group(text, i, max_chars=max_chars)
            if content is not None:
                return content
        end = start
    return None


def balanced_group(
    text: str, open_at: int, *, max_chars: int = 4096, open_ch: str = "{", close_ch: str = "}"
) -> str | None:
    """The text inside the brace group opening at ``text[open_at]``; ``None`` if unclosed within ``max_chars``.

    Escaped braces (``\\{``, ``\\}``) do not count.
    """
    if open_at >= len(text) or text[open_at] != open_ch:
        return None
    depth = 0
    limit = min(len(text), open_at + max_chars + 2)
    i = open_at
    while i < limit:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def max_nesting(text: str, pairs: str = "{}()[]") -> int:
    """The maximum bracket nesting depth of ``text`` (unbalanced closers are ignored)."""
    opens = set(pairs[0::2])
    closes = set(pairs[1::2])
    depth = best = 0
    for ch in text:
        if ch in opens:
            depth += 1
            if depth > best:
                best = depth
        elif ch in closes and depth > 0:
            depth -= 1
    return best


def truncate(text: str, n: int = 80) -> str:
    """``text`` shortened to ``n`` characters for messages."""
    return text if len(text) <= n else text[: n - 3] + "..."
