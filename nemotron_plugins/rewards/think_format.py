"""``think_format``: the reasoning-toggle format reward.

* ``"on"`` mode: the reply starts (after whitespace) with exactly one ``<think>...</think>`` block, followed by a
  non-empty answer. An empty think block is allowed (the model decided no reasoning was needed).
* ``"off"`` mode: the reply contains no ``<think>`` or ``</think>`` tag and a non-empty answer.

The mode comes from ``metadata["reasoning"]``; when it is missing, the prompt's system message
(``detailed thinking on`` / ``detailed thinking off``) decides; when neither says, the sample is invalid input unless
the reward was built with ``default_mode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemotron_plugins.rewards.base import RewardResult, RewardSample, SampleReward
from nemotron_plugins.rewards.text import THINK_CLOSE, THINK_OPEN

_MODES = ("on", "off")


def reasoning_mode(sample: RewardSample, default: str | None = None) -> str | None:
    """The sample's reasoning mode: ``metadata["reasoning"]``, else the system prompt's toggle, else ``default``."""
    mode = sample.metadata.get("reasoning") if isinstance(sample.metadata, Mapping) else None
    if isinstance(mode, bool):
        return "on" if mode else "off"
    if isinstance(mode, str) and mode.strip().lower() in _MODES:
        return mode.strip().lower()
    if isinstance(sample.prompt, list):
        for message in sample.prompt:
            if isinstance(message, Mapping) and message.get("role") == "system":
                content = str(message.get("content", "")).strip().lower()
                if content in ("detailed thinking on", "detailed thinking off"):
                    return content.rsplit(" ", 1)[1]
    return default


def check_think_format(completion: str, mode: str) -> tuple[bool, dict[str, float], str | None]:
    """Whether ``completion`` is well formed for ``mode``; also components and a reason when it is not."""
    n_open = completion.count(THINK_OPEN)
    n_close = completion.count(THINK_CLOSE)
    if mode == "off":
        answer_present = bool(completion.strip())
        clean = n_open == 0 and n_close == 0
        reason = (
            None if clean and answer_present else ("think tags present in off mode" if not clean else "empty reply")
        )
        return (
            clean and answer_present,
            {"no_think_tags": float(clean), "answer_present": float(answer_present)},
            reason,
        )
    stripped = completion.lstrip()
    starts = stripped.startswith(THINK_OPEN)
    single = n_open == 1 and n_close == 1
    ordered = single and completion.find(THINK_OPEN) < completion.find(THINK_CLOSE)
    answer = completion[completion.rfind(THINK_CLOSE) + len(THINK_CLOSE) :] if n_close else ""
    answer_present = bool(answer.strip())
    ok = starts and single and ordered and answer_present
    reason = None
    if not ok:
        if not starts:
            reason = "reply does not start with <think>"
        elif not single:
            reason = f"expected one <think> and one </think>, found {n_open} and {n_close}"
        elif not ordered:
            reason = "</think> comes before <think>"
        else:
            reason = "no answer after </think>"
    return ok, {"think_block": float(starts and ordered), "answer_present": float(answer_present)}, reason


class ThinkFormatReward(SampleReward):
    """1.0 when the reply's think tags match the sample's reasoning mode, else 0.0.

    Args:
        default_mode: Mode for samples whose metadata and prompt do not say (``"on"``, ``"off"`` or ``None`` to
            report them as invalid input).

    Example:
        >>> r = ThinkFormatReward()
        >>> [x.score for x in r.score([
        ...     RewardSample(completion="<think>hmm</think>42", metadata={"reasoning": "on"}),
        ...     RewardSample(completion="<think>hmm</think>42", metadata={"reasoning": "off"}),
        ... ])]
        [1.0, 0.0]
    """

    name = "think_format"

    def __init__(self, *, default_mode: str | None = None, max_completion_chars: int = 1_000_000) -> None:
        if default_mode is not None and default_mode not in _MODES:
            raise ValueError(f"think_format: default_mode must be 'on', 'off' or None, got {default_mode!r}")
        self.default_mode = default_mode
        self.max_completion_chars = max_completion_chars

    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample."""
        mode = reasoning_mode(sample, self.default_mode)
        if mode is None:
            got: Any = sample.metadata.get("reasoning") if isinstance(sample.metadata, Mapping) else None
            return RewardResult.invalid(
                f"think_format: metadata['reasoning'] must be 'on' or 'off' (got {got!r}) or the prompt must carry "
                "the system message 'detailed thinking on/off'"
            )
        ok, components, reason = check_think_format(sample.completion, mode)
        return RewardResult(score=1.0 if ok else 0.0, components=components, message=reason)
