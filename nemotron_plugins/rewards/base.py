"""The reward protocol: samples in, one scored result per sample out, never an exception for bad model text.

A reward scores a *batch* of :class:`RewardSample` and returns a list of :class:`RewardResult` in the same order.
Every result carries a float ``score``, a :class:`RewardStatus` saying whether scoring worked, named ``components``
(sub-scores such as the per-instruction results of ``ifeval`` or the sub-rewards of a composition) and an optional
``message`` explaining a non-OK status.

Rewards are registered by name in :data:`nemotron_plugins.registry.REWARDS` and built with :func:`build_reward`,
which also accepts a *spec* describing a composition:

========================================================  ============================================================
spec                                                      meaning
========================================================  ============================================================
``"math"``                                                the registered reward ``math`` with its defaults
``{"reward": "math", "options": {...}, "name": "m"}``     ``math`` built with keyword options; ``name`` renames it
                                                          (``"options"`` may be omitted; extra keys are options too)
``{"weighted": {"math": 1.0, "think_format": 0.5}}``      weighted sum ``1.0 * math + 0.5 * think_format``
``{"weighted": [{"reward": spec, "weight": w}, ...]}``    the same with nested specs
``{"gate": ["think_format", "math"]}``                    ``math``'s score if every earlier reward (the gates) scores
                                                          ``>= threshold`` (default 1.0), else 0.0 (format x accuracy)
``{"gate": [...], "threshold": 0.5, "fail_score": -1.0}`` a softer gate and a penalty when it is closed
``{"product": ["think_format", "math"]}``                 the product of the scores
``{"pool": spec, "workers": 2, "timeout_s": 5.0}``        ``spec`` scored in a pool of worker processes (see
                                                          :mod:`nemotron_plugins.rewards.pool`)
========================================================  ============================================================

A composed reward's ``components`` are its sub-rewards' scores under the sub-reward names (``"math"``,
``"think_format"``), plus each sub-reward's own components as ``"<name>/<component>"``. Its status is the most severe
sub-status (error > unavailable > timeout > invalid_input > ok).

Example:
    >>> from nemotron_plugins.rewards.base import RewardSample, build_reward
    >>> reward = build_reward({"gate": ["think_format", "math"]})
    >>> sample = RewardSample(completion="<think>2+2</think>4", ground_truth="4", metadata={"reasoning": "on"})
    >>> result = reward.score([sample])[0]
    >>> result.score, dict(result.components)["math"]
    (1.0, 1.0)
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

logger = logging.getLogger(__name__)


class RewardStatus(str, Enum):  # noqa: UP042 - the agreed API spells it this way
    """Whether a sample could be scored."""

    OK = "ok"
    """Scored normally (a wrong answer is OK with score 0)."""
    INVALID_INPUT = "invalid_input"
    """The sample cannot be scored by this reward: missing/malformed ground truth, input over the size bound, ..."""
    TIMEOUT = "timeout"
    """Scoring ran past its time bound (a hung worker was killed, a server did not answer in time)."""
    ERROR = "error"
    """Scoring failed for another reason (a server error, an unexpected exception); see ``message``."""
    UNAVAILABLE = "unavailable"
    """The service a reward depends on could give no verdict (a judge that is down, overloaded or past the batch
    deadline, or a circuit breaker that is open). The score is NaN: no reward is known for the sample, and it must not
    be read as a wrong answer; adapters report ``None`` where the framework accepts it."""


#: Severity order used when merging statuses of composed rewards.
STATUS_SEVERITY: dict[RewardStatus, int] = {
    RewardStatus.OK: 0,
    RewardStatus.INVALID_INPUT: 1,
    RewardStatus.TIMEOUT: 2,
    RewardStatus.UNAVAILABLE: 3,
    RewardStatus.ERROR: 4,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardSample:
    """One model completion to score."""

    completion: str
    """The model's reply text (for chat completions: the assistant message content)."""
    ground_truth: Any = None
    """The reference the reward compares against (answer string, tool calls, instruction list, ...)."""
    prompt: str | list[dict] | None = None
    """The prompt as text or as chat messages ``[{"role": ..., "content": ...}]``; some rewards need it."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Extra per-sample fields; ``metadata["reasoning"]`` is ``"on"`` or ``"off"`` (the reasoning toggle)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardResult:
    """The outcome of scoring one sample."""

    score: float
    """The reward value; 0.0 when the status is not OK unless the reward documents otherwise, NaN for
    :attr:`RewardStatus.UNAVAILABLE`."""
    status: RewardStatus = RewardStatus.OK
    """Whether scoring worked."""
    components: Mapping[str, float] = field(default_factory=dict)
    """Named sub-scores (per instruction, per sub-reward, extraction flags, ...)."""
    message: str | None = None
    """Why the status is not OK (or a short note); ``None`` when there is nothing to say."""

    @property
    def ok(self) -> bool:
        """True when the status is :attr:`RewardStatus.OK`."""
        return self.status is RewardStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``score`` (``None`` when NaN: no reward known), ``status`` (string), ``components``
        and ``message``."""
        return {
            "score": None if math.isnan(self.score) else self.score,
            "status": self.status.value,
            "components": dict(self.components),
            "message": self.message,
        }

    @classmethod
    def invalid(cls, message: str, score: float = 0.0) -> RewardResult:
        """An :attr:`RewardStatus.INVALID_INPUT` result."""
        return cls(score=score, status=RewardStatus.INVALID_INPUT, message=message)

    @classmethod
    def timeout(cls, message: str, score: float = 0.0) -> RewardResult:
        """A :attr:`RewardStatus.TIMEOUT` result."""
        return cls(score=score, status=RewardStatus.TIMEOUT, message=message)

    @classmethod
    def error(cls, message: str, score: float = 0.0) -> RewardResult:
        """An :attr:`RewardStatus.ERROR` result."""
        return cls(score=score, status=RewardStatus.ERROR, message=message)

    @classmethod
    def unavailable(cls, message: str) -> RewardResult:
        """An :attr:`RewardStatus.UNAVAILABLE` result (score NaN: no reward is known)."""
        return cls(score=math.nan, status=RewardStatus.UNAVAILABLE, message=message)


def worst_status(statuses: Sequence[RewardStatus]) -> RewardStatus:
    """The most severe status of ``statuses`` (OK for an empty sequence)."""
    return max(statuses, key=STATUS_SEVERITY.__getitem__, default=RewardStatus.OK)


class Reward(ABC):
    """A reward function over batches of samples.

    Subclasses set :attr:`name` and implement :meth:`score`. ``score`` must return exactly one result per sample, in
    input order, and must not raise because of anything in the model's text; bad ground truth or metadata becomes an
    :attr:`RewardStatus.INVALID_INPUT` result. Rewards holding resources (worker processes, HTTP sessions) release
    them in :meth:`close`; every reward is a context manager.
    """

    name: str = "reward"
    bounded: bool = False
    """True when scoring is bounded in time and memory by construction wherever it runs (server-backed rewards with
    request deadlines); the adapters run every other reward behind a worker pool
    (:func:`nemotron_plugins.rewards.pool.bounded_reward`)."""

    @abstractmethod
    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Score ``samples``; one result per sample, in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty by default
        """Release resources (worker processes, connections). Safe to call twice."""

    def __enter__(self) -> Reward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SampleReward(Reward):
    """A reward that scores samples one at a time with :meth:`score_sample`.

    :meth:`score` bounds the completion size (``max_completion_chars``; longer completions are invalid input), turns
    any exception into an :attr:`RewardStatus.ERROR` result naming it, and keeps input order. Subclasses are plain
    picklable objects so the worker pool can ship them to other processes.
    """

    max_completion_chars: int = 200_000

    @abstractmethod
    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample. May raise; :meth:`score` converts exceptions to error results."""

    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Score each sample with :meth:`score_sample`, never raising."""
        return [self.safe_score_sample(s) for s in samples]

    def safe_score_sample(self, sample: RewardSample) -> RewardResult:
        """:meth:`score_sample` with the size bound and exception capture applied."""
        completion = sample.completion
        if not isinstance(completion, str):
            return RewardResult.invalid(f"completion must be a string, got {type(completion).__name__}")
        if len(completion) > self.max_completion_chars:
            return RewardResult.invalid(
                f"completion has {len(completion)} characters, over this reward's bound of "
                f"{self.max_completion_chars} (max_completion_chars)"
            )
        try:
            return self.score_sample(sample)
        except RecursionError:
            return RewardResult.invalid(f"{self.name}: input nested too deeply to score")
        except Exception as exc:  # noqa: BLE001 - a reward never raises on one bad sample
            logger.debug("reward %s failed on a sample", self.name, exc_info=True)
            return RewardResult.error(f"{self.name}: {type(exc).__name__}: {exc}"[:500])


class RewardSpecError(ValueError):
    """A reward spec given to :func:`build_reward` is malformed."""


def build_reward(name_or_spec: str | Mapping[str, Any] | Reward, **kwargs: Any) -> Reward:
    """Build a reward from a registered name or a composition spec (see the module docstring for the spec forms).

    Args:
        name_or_spec: A name registered in ``REWARDS``, a spec mapping, or an already built :class:`Reward`
            (returned unchanged).
        **kwargs: Keyword options for a plain named reward (e.g. ``build_reward("llm_judge", base_url=...)``).
            For a composition spec, options for a sub-reward go inside its own spec.

    Returns:
        The reward.

    Raises:
        RewardSpecError: If the spec is malformed; the message names the offending key and the valid forms.
        nemotron_plugins.registry.UnknownPluginError: If a name is not registered (the message lists valid names).
    """
    from nemotron_plugins.rewards.compose import build_from_spec

    return build_from_spec(name_or_spec, **kwargs)
