"""Adapters: the same rewards as TRL reward functions, a verl ``compute_score``, a NeMo-RL environment and an
OpenRLHF ``reward_func``.

Each adapter builds its reward once (from a name or spec, see :func:`nemotron_plugins.rewards.base.build_reward`) and
converts the framework's arguments to :class:`RewardSample`. The reasoning mode (``metadata["reasoning"]``) comes
from a ``reasoning`` column / field when present, else from the prompt's ``detailed thinking on|off`` system message.

Bounds: by default every adapter scores through a worker pool (:func:`nemotron_plugins.rewards.pool.bounded_reward`:
a hard per-sample kill after ``timeout_s`` and a memory cap per worker), because nothing inside the calling process
can bound a symbolic computation off the main thread (``\\binom{99999999}{49999999}`` ran for minutes in a thread,
``10^{9999*9999}`` froze a process). Server-backed rewards (``llm_judge``, ``reward_model``) are bounded by their own
deadlines and stay in-process. ``in_process=True`` scores in the calling process instead: faster to start, but a
hostile completion can then hang or exhaust the caller; use it only for trusted text.

What a non-OK status becomes is set per adapter with ``none_on`` / ``status_scores``: by default TRL gets ``None``
(TRL's "not applicable", ignored in its weighted sum) for every failure status, never a 0 that would read as a wrong
answer; frameworks that need a number get the score plus ``status_ok`` (verl, OpenRLHF) so the failure stays visible.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from nemotron_plugins.rewards.base import Reward, RewardResult, RewardSample, RewardStatus, build_reward
from nemotron_plugins.rewards.pool import bounded_reward

#: Worker processes and per-sample time bound of the pool the adapters score through by default.
DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT_S = 10.0


def adapter_reward(
    spec: str | Mapping[str, Any] | Reward,
    *,
    in_process: bool = False,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Reward:
    """The reward an adapter scores with: ``spec`` built, then bounded by a worker pool unless ``in_process``.

    Args:
        spec: A reward name, spec or built reward.
        in_process: Score in the calling process. Risk: nothing then bounds a sample's time or memory (math-verify's
            alarm works only in a main thread); a hostile completion can hang or exhaust the trainer.
        workers: Pool worker processes.
        timeout_s: Per-sample time bound in the pool; past it the sample gets status ``timeout``.
    """
    reward = spec if isinstance(spec, Reward) else build_reward(spec)
    if in_process:
        return reward
    return bounded_reward(reward, workers=workers, timeout_s=timeout_s)


_SYSTEM_TOGGLE = {"detailed thinking on": "on", "detailed thinking off": "off"}


def completion_text(completion: Any) -> str:
    """The completion as text: a string, or the content of the last assistant message of a conversational one.

    Example:
        >>> completion_text([{"role": "assistant", "content": "<think></think>4"}])
        '<think></think>4'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                content = message.get("content", "")
                if isinstance(content, list):  # multimodal content parts
                    return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
                return str(content)
    return "" if completion is None else str(completion)


def infer_reasoning(prompt: Any) -> str | None:
    """``"on"``/``"off"`` from a chat prompt's system message, or a text prompt containing the toggle."""
    if isinstance(prompt, str):
        for text, mode in _SYSTEM_TOGGLE.items():
            if text in prompt:
                return mode
        return None
    if isinstance(prompt, Sequence):
        for message in prompt:
            if isinstance(message, Mapping) and message.get("role") == "system":
                mode = _SYSTEM_TOGGLE.get(str(message.get("content", "")).strip().lower())
                if mode:
                    return mode
    return None


def make_sample(
    completion: Any, ground_truth: Any, prompt: Any = None, metadata: Mapping[str, Any] | None = None
) -> RewardSample:
    """A :class:`RewardSample` from framework values, filling ``metadata["reasoning"]`` when it can."""
    meta = dict(metadata or {})
    if meta.get("reasoning") not in ("on", "off"):
        mode = infer_reasoning(prompt)
        if mode is not None:
            meta["reasoning"] = mode
    if prompt is not None and not isinstance(prompt, str | list):
        prompt = list(prompt) if isinstance(prompt, Sequence) else str(prompt)
    return RewardSample(
        completion=completion_text(completion), ground_truth=ground_truth, prompt=prompt, metadata=meta
    )


@dataclass(kw_only=True, slots=True)
class StatusPolicy:
    """What each non-OK status turns into for frameworks that accept ``None``."""

    none_on: tuple[str, ...] = ("invalid_input", "error", "timeout", "unavailable")
    """Statuses reported as ``None`` ("no reward for this sample"); others report ``result.score``."""
    status_scores: dict[str, float] = field(default_factory=dict)
    """Fixed scores per status (e.g. ``{"timeout": -1.0}``), applied before ``none_on``."""

    def value(self, result: RewardResult) -> float | None:
        """The number (or ``None``) a framework gets for ``result``."""
        status = result.status.value
        if status in self.status_scores:
            return float(self.status_scores[status])
        if result.status is not RewardStatus.OK and status in self.none_on:
            return None
        return float(result.score)


#: Keyword arguments TRL passes to reward functions that are not dataset columns.
_TRL_NON_COLUMNS = frozenset({"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"})


# -- TRL ------------------------------------------------------------------------------------------------------------
def make_trl_reward_func(
    spec: str | Mapping[str, Any] | Reward = "math",
    *,
    ground_truth_column: str | Sequence[str] = ("ground_truth", "solution", "answer"),
    policy: StatusPolicy | None = None,
    name: str | None = None,
    in_process: bool = False,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Callable[..., list[float | None]]:
    """A TRL reward function ``f(prompts, completions, **columns) -> list[float | None]``.

    Args:
        spec: The reward name or spec.
        ground_truth_column: Dataset column(s) holding the ground truth; the first one present is used.
        policy: Status handling (default: ``None`` for every failure status).
        name: ``__name__`` of the function (TRL logs rewards under it); defaults to the reward's name.
        in_process: Score in TRL's process instead of a worker pool (see :func:`adapter_reward` for the risk).
        workers: Pool worker processes.
        timeout_s: Per-sample time bound in the pool.

    Every other per-sample column (a list as long as the batch) is passed as metadata, so a ``reasoning`` column
    sets the mode; TRL's conversational completions (lists of messages) are handled.

    Example:
        >>> f = make_trl_reward_func("math", in_process=True)  # in_process only to keep this example light
        >>> f(prompts=["1+1?"], completions=[[{"role": "assistant", "content": "<think></think>2"}]], ground_truth=["2"])
        [1.0]
    """
    reward = adapter_reward(spec, in_process=in_process, workers=workers, timeout_s=timeout_s)
    policy = policy or StatusPolicy()
    columns = (ground_truth_column,) if isinstance(ground_truth_column, str) else tuple(ground_truth_column)

    def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        n = len(completions)
        gt_col = next((c for c in columns if c in kwargs), None)
        gts = kwargs[gt_col] if gt_col is not None else [None] * n
        per_sample = {
            k: v
            for k, v in kwargs.items()
            if k != gt_col
            and k not in _TRL_NON_COLUMNS
            and isinstance(v, Sequence)
            and not isinstance(v, str)
            and len(v) == n
        }
        prompts = prompts if prompts is not None else [None] * n
        samples = [
            make_sample(completions[i], gts[i], prompts[i], {k: v[i] for k, v in per_sample.items()}) for i in range(n)
        ]
        return [policy.value(r) for r in reward.score(samples)]

    reward_func.__name__ = name or reward.name
    reward_func.__qualname__ = reward_func.__name__
    reward_func.reward = reward  # type: ignore[attr-defined] - lets callers close() it
    return reward_func


# -- verl -----------------------------------------------------------------------------------------------------------
#: verl ``data_source`` prefixes -> reward spec used by :func:`compute_score` (the first matching prefix wins).
DATA_SOURCE_REWARDS: dict[str, str] = {
    "gpqa": "mcq",
    "mmlu": "mcq",
    "mcq": "mcq",
    "ifeval": "ifeval",
    "instruction": "ifeval",
    "tool": "tool_call",
    "bfcl": "tool_call",
    "xlam": "tool_call",
}


@lru_cache(maxsize=32)
def _cached_reward(spec_key: str, workers: int) -> Reward:
    import json

    return adapter_reward(json.loads(spec_key), workers=workers)


def _reward_for(spec: str | Mapping[str, Any], *, workers: int = DEFAULT_WORKERS) -> Reward:
    import json

    return _cached_reward(json.dumps(spec, sort_keys=True), workers)


def make_verl_compute_score(
    spec: str | Mapping[str, Any] | Reward = "math",
    *,
    in_process: bool = False,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Callable[..., dict[str, Any]]:
    """A verl ``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> dict``.

    The dict has ``score`` plus the components and ``status_ok`` as numbers (verl logs the extra keys). Scoring runs
    in a worker pool unless ``in_process`` (see :func:`adapter_reward` for the options and the risk).
    """
    reward = adapter_reward(spec, in_process=in_process, workers=workers, timeout_s=timeout_s)

    def compute_score(
        data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        extra = dict(extra_info or {})
        prompt = extra.pop("prompt", None)
        return _verl_dict(reward.score([make_sample(solution_str, ground_truth, prompt, extra)])[0])

    compute_score.reward = reward  # type: ignore[attr-defined] - lets callers close() it
    return compute_score


def numeric_score(result: RewardResult) -> float:
    """The score for a framework that needs a number: ``result.score``, or 0.0 when it is NaN (status
    ``unavailable``: no reward known); such frameworks also get ``status_ok`` so the failure stays visible."""
    score = float(result.score)
    return score if math.isfinite(score) else 0.0


def _verl_dict(result: RewardResult) -> dict[str, Any]:
    out: dict[str, Any] = {"score": numeric_score(result), "status_ok": 1.0 if result.ok else 0.0}
    for key, value in result.components.items():
        out[key] = float(value)
    return out


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """verl entry point (``custom_reward_function.path=<this file>``, ``name=compute_score``).

    The reward is ``extra_info["reward"]`` (a name or spec) when given, else chosen from ``data_source`` by
    :data:`DATA_SOURCE_REWARDS`, else ``math``.
    """
    extra = dict(extra_info or {})
    spec = extra.pop("reward", None)
    if spec is None:
        source = (data_source or "").lower()
        spec = next((r for prefix, r in DATA_SOURCE_REWARDS.items() if source.startswith(prefix)), "math")
    prompt = extra.pop("prompt", None)
    # verl calls this once per sample, one call at a time: one pool worker per reward is enough.
    result = _reward_for(spec, workers=1).score([make_sample(solution_str, ground_truth, prompt, extra)])[0]
    return _verl_dict(result)


# -- NeMo-RL --------------------------------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class EnvironmentReturn:
    """The fields of NeMo-RL's ``EnvironmentReturn`` (used when nemo_rl itself is not installed)."""

    observations: list[dict[str, str]]
    """One ``{"role": "environment", "content": ...}`` message per sample."""
    metadata: list[Any]
    """Per-sample metadata passed through."""
    next_stop_strings: list[Any]
    """``None`` per sample (single-turn)."""
    rewards: Any
    """A float tensor of rewards (a list when torch is unavailable)."""
    terminateds: Any
    """A bool tensor, all True (single-turn)."""
    answers: list[str | None]
    """The scored completions."""


class NemoRLRewardEnvironment:
    """A single-turn NeMo-RL environment whose reward is one of ours.

    ``step(message_log_batch, metadata)`` takes NeMo-RL's batch of message logs (lists of ``{"role", "content"}``)
    and per-sample metadata dicts holding ``ground_truth`` (and optionally ``reasoning``), scores the last assistant
    message of each log, and returns NeMo-RL's ``EnvironmentReturn`` (or an identical local dataclass when nemo_rl
    is not installed). Wrap it with ``ray.remote`` as NeMo-RL does for its own environments.

    Args:
        spec: The reward name or spec.
        ground_truth_key: Metadata key of the ground truth.
        in_process: Score in this process instead of a worker pool (see :func:`adapter_reward` for the risk).
        workers: Pool worker processes.
        timeout_s: Per-sample time bound in the pool.
    """

    def __init__(
        self,
        spec: str | Mapping[str, Any] | Reward = "math",
        *,
        ground_truth_key: str = "ground_truth",
        in_process: bool = False,
        workers: int = DEFAULT_WORKERS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.reward = adapter_reward(spec, in_process=in_process, workers=workers, timeout_s=timeout_s)
        self.ground_truth_key = ground_truth_key

    def step(self, message_log_batch: Sequence[Sequence[Mapping[str, Any]]], metadata: Sequence[Any]) -> Any:
        """Score one batch; see the class docstring."""
        samples = []
        for log, meta in zip(message_log_batch, metadata, strict=True):
            meta = dict(meta or {})
            gt = meta.pop(self.ground_truth_key, None)
            prompt = [dict(m) for m in log if m.get("role") != "assistant"]
            samples.append(make_sample(list(log), gt, prompt, meta))
        results = self.reward.score(samples)
        observations = [
            {"role": "environment", "content": f"{self.reward.name}: {r.score:g} ({r.status.value})"} for r in results
        ]
        scores = [float(r.score) for r in results]
        try:
            import torch

            rewards: Any = torch.tensor(scores, dtype=torch.float32)
            terminateds: Any = torch.ones(len(scores), dtype=torch.bool)
        except ImportError:
            rewards, terminateds = scores, [True] * len(scores)
        fields = {
            "observations": observations,
            "metadata": list(metadata),
            "next_stop_strings": [None] * len(results),
            "rewards": rewards,
            "terminateds": terminateds,
            "answers": [s.completion for s in samples],
        }
        try:
            from nemo_rl.environments.interfaces import EnvironmentReturn as NemoEnvironmentReturn

            return NemoEnvironmentReturn(**fields)
        except (ImportError, TypeError):
            return EnvironmentReturn(**fields)

    def global_post_process_and_metrics(self, batch: Any) -> tuple[Any, dict[str, float]]:
        """NeMo-RL hook: no post-processing; reports the mean reward when the batch carries ``total_reward``."""
        metrics: dict[str, float] = {}
        try:
            metrics[f"{self.reward.name}/mean_reward"] = float(batch["total_reward"].float().mean())
        except (KeyError, TypeError, AttributeError):
            pass
        return batch, metrics

    def shutdown(self) -> None:
        """Release the reward's resources."""
        self.reward.close()


# -- OpenRLHF -------------------------------------------------------------------------------------------------------
def make_openrlhf_reward_func(
    spec: str | Mapping[str, Any] | Reward = "math",
    *,
    return_dict: bool = True,
    in_process: bool = False,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Callable[[Sequence[str], Sequence[str], Sequence[Any]], Any]:
    """An OpenRLHF ``reward_func(queries, prompts, labels)``.

    ``queries`` are prompt + response texts; the response is the query minus its prompt prefix. Returns
    ``{"rewards": tensor, "scores": tensor, "extra_logs": {component: tensor}}`` (OpenRLHF >= 0.6) or just the
    rewards tensor with ``return_dict=False``. Scoring runs in a worker pool unless ``in_process`` (see
    :func:`adapter_reward` for the options and the risk).
    """
    reward = adapter_reward(spec, in_process=in_process, workers=workers, timeout_s=timeout_s)

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any]) -> Any:
        samples = []
        for query, prompt, label in zip(queries, prompts, labels, strict=True):
            response = query[len(prompt) :] if prompt and query.startswith(prompt) else query
            samples.append(make_sample(response, label, prompt))
        results = reward.score(samples)
        return _openrlhf_output(results, return_dict)

    reward_func.reward = reward  # type: ignore[attr-defined] - lets callers close() it
    return reward_func


def _openrlhf_output(results: Iterable[RewardResult], return_dict: bool) -> Any:
    results = list(results)
    scores = [numeric_score(r) for r in results]
    keys = sorted({k for r in results for k in r.components})
    try:
        import torch

        def tensor(values: list[float]) -> Any:
            return torch.tensor(values, dtype=torch.float32)
    except ImportError:

        def tensor(values: list[float]) -> Any:
            return values

    if not return_dict:
        return tensor(scores)
    extra = {k: tensor([float(r.components.get(k, 0.0)) for r in results]) for k in keys}
    extra["status_ok"] = tensor([1.0 if r.ok else 0.0 for r in results])
    return {"rewards": tensor(scores), "scores": tensor(scores), "extra_logs": extra}


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any]) -> Any:
    """OpenRLHF entry point (``--remote_rm_url <this file>``); the reward spec is the ``NEMOTRON_REWARD`` environment
    variable (a name or a JSON spec; default ``math``)."""
    import json

    raw = os.environ.get("NEMOTRON_REWARD", "math")
    spec = json.loads(raw) if raw.lstrip().startswith("{") else raw
    reward = _reward_for(spec)
    samples = []
    for query, prompt, label in zip(queries, prompts, labels, strict=True):
        response = query[len(prompt) :] if prompt and query.startswith(prompt) else query
        samples.append(make_sample(response, label, prompt))
    return _openrlhf_output(reward.score(samples), True)
