"""Counting what a data pipeline kept and skipped, per reason, with example line numbers.

Public API: :class:`DataReport`, :class:`BadRowError`, :data:`SKIP_REASONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SKIP_REASONS: dict[str, str] = {
    "bad_json": "the line is not a JSON object",
    "missing_field": "a required field (input, output, reasoning, system_prompt) is missing or null",
    "bad_field": "a field has the wrong type (input must be a list of messages, output/system_prompt strings)",
    "bad_messages": "input messages have a bad role or content, or the last one is not a user/tool turn",
    "bad_reasoning_value": "reasoning is not 'on' or 'off'",
    "reasoning_mismatch": "reasoning disagrees with the 'detailed thinking on|off' of system_prompt",
    "empty_output": "output is empty",
    "missing_think": "reasoning is on but output has no <think>...</think> block",
    "malformed_think": "output has malformed think tags (unclosed, nested, stray, several blocks, no answer)",
    "think_in_off_mode": "reasoning is off but output contains think tags",
    "too_long": "prompt + target tokens exceed max_seq_len",
}
"""Reasons a row is skipped, and what each means."""

MAX_EXAMPLE_LINES = 5


class BadRowError(ValueError):
    """A bad row in strict mode: names the line, the reason code and what is wrong."""

    def __init__(self, line: int, reason: str, detail: str) -> None:
        super().__init__(f"line {line}: {reason}: {detail}")
        self.line = line
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class DataReport:
    """Counts of rows read, kept and skipped per reason."""

    total: int = 0
    """Rows read."""
    kept: int = 0
    """Rows turned into examples."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Skipped rows per reason code (keys of :data:`SKIP_REASONS`)."""
    example_lines: dict[str, list[int]] = field(default_factory=dict)
    """Up to five line numbers per reason."""
    first_detail: dict[str, str] = field(default_factory=dict)
    """The message of the first skipped row per reason."""

    def skip(self, line: int, reason: str, detail: str) -> None:
        """Record a skipped row."""
        if reason not in SKIP_REASONS:
            raise KeyError(f"unknown skip reason {reason!r}; known: {', '.join(SKIP_REASONS)}")
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        lines = self.example_lines.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES:
            lines.append(line)
        self.first_detail.setdefault(reason, detail)

    @property
    def num_skipped(self) -> int:
        """Total skipped rows."""
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "total": self.total,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "example_lines": {k: list(v) for k, v in sorted(self.example_lines.items())},
            "first_detail": dict(sorted(self.first_detail.items())),
        }

    def format(self) -> str:
        """A human-readable multi-line summary."""
        lines = [f"rows: {self.total}, kept: {self.kept}, skipped: {self.num_skipped}"]
        for reason in sorted(self.skipped):
            where = ", ".join(str(n) for n in self.example_lines.get(reason, []))
            lines.append(f"  {reason}: {self.skipped[reason]} (lines {where}) - {self.first_detail.get(reason, '')}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
