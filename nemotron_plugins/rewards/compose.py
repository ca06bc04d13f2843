"""Composition of rewards (weighted sums, gates, products) and the spec parser behind ``build_reward``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nemotron_plugins.rewards.base import (
    Reward,
    RewardResult,
    RewardSample,
    RewardSpecError,
    RewardStatus,
    worst_status,
)

_SPEC_HELP = (
    'valid specs: "name", {"reward": name, "options": {...}, "name": alias}, {"weighted": {name: weight, ...}}, '
    '{"weighted": [{"reward": spec, "weight": w}, ...]}, {"gate": [gate, ..., value], "threshold": t, '
    '"fail_score": s}, {"product": [spec, ...]}, {"pool": spec, "workers": n, "timeout_s": t}'
)


class _Composite(Reward):
    """Shared machinery: score every child on the whole batch, then combine per sample."""

    def __init__(self, children: Sequence[Reward], *, name: str) -> None:
        if not children:
            raise RewardSpecError(f"{name}: a composition needs at least one sub-reward")
        self.children = list(children)
        self.name = name
        self._keys = _unique_names([c.name for c in self.children])

    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Score with every child, then combine per sample."""
        samples = list(samples)
        per_child = [child.score(samples) for child in self.children]
        for child, results in zip(self.children, per_child, strict=True):
            if len(results) != len(samples):
                raise RuntimeError(f"reward {child.name!r} returned {len(results)} results for {len(samples)} samples")
        out = []
        for i in range(len(samples)):
            subs = [results[i] for results in per_child]
            components: dict[str, float] = {}
            for key, sub in zip(self._keys, subs, strict=True):
                components[key] = sub.score
                for comp, value in sub.components.items():
                    components[f"{key}/{comp}"] = value
            status = worst_status([s.status for s in subs])
            messages = [
                s.message if s.message.startswith(f"{key}:") else f"{key}: {s.message}"
                for key, s in zip(self._keys, subs, strict=True)
                if s.message
            ]
            out.append(
                RewardResult(
                    score=float(self.combine(subs)),
                    status=status,
                    components=components,
                    message="; ".join(messages) if messages else None,
                )
            )
        return out

    def combine(self, subs: Sequence[RewardResult]) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Close every child."""
        for child in self.children:
            child.close()


class WeightedSum(_Composite):
    """``sum_i weight_i * score_i`` over sub-rewards.

    Args:
        children: The sub-rewards.
        weights: One finite weight per sub-reward.
        name: Name of the composed reward.
    """

    def __init__(self, children: Sequence[Reward], weights: Sequence[float], *, name: str = "weighted") -> None:
        super().__init__(children, name=name)
        if len(weights) != len(self.children):
            raise RewardSpecError(f"weighted: {len(weights)} weights for {len(self.children)} sub-rewards")
        for key, w in zip(self._keys, weights, strict=True):
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
                raise RewardSpecError(f"weighted: weight of {key!r} must be a finite number, got {w!r}")
        self.weights = [float(w) for w in weights]

    def combine(self, subs: Sequence[RewardResult]) -> float:
        return sum(w * s.score for w, s in zip(self.weights, subs, strict=True))


class Gate(_Composite):
    """The last sub-reward's score when every earlier one (a gate) scores at least ``threshold``, else ``fail_score``.

    ``{"gate": ["think_format", "math"]}`` is the usual "format x accuracy" reward: a correct answer in a malformed
    reply earns nothing.

    Args:
        children: Gates followed by the value reward (at least two).
        threshold: Minimum gate score that opens the gate.
        fail_score: Score when a gate is closed.
        name: Name of the composed reward.
    """

    def __init__(
        self, children: Sequence[Reward], *, threshold: float = 1.0, fail_score: float = 0.0, name: str = "gate"
    ) -> None:
        super().__init__(children, name=name)
        if len(self.children) < 2:
            raise RewardSpecError("gate: needs at least two sub-rewards (one or more gates, then the value reward)")
        self.threshold = float(threshold)
        self.fail_score = float(fail_score)

    def combine(self, subs: Sequence[RewardResult]) -> float:
        gates, value = subs[:-1], subs[-1]
        if all(g.status is RewardStatus.OK and g.score >= self.threshold for g in gates):
            return value.score
        return self.fail_score


class Product(_Composite):
    """The product of the sub-rewards' scores."""

    def __init__(self, children: Sequence[Reward], *, name: str = "product") -> None:
        super().__init__(children, name=name)

    def combine(self, subs: Sequence[RewardResult]) -> float:
        return math.prod(s.score for s in subs)


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _build_named(name: str, options: Mapping[str, Any], alias: str | None = None) -> Reward:
    from nemotron_plugins.registry import REWARDS

    target = REWARDS.get(name)
    if isinstance(target, Reward):
        if options:
            raise RewardSpecError(
                f"reward {name!r} is a registered instance and takes no options, got {dict(options)}"
            )
        reward = target
    else:
        try:
            reward = target(**options)
        except TypeError as exc:
            raise RewardSpecError(f"reward {name!r}: bad options {sorted(options)}: {exc}") from exc
        if not isinstance(reward, Reward):
            raise RewardSpecError(f"reward {name!r} built a {type(reward).__name__}, not a Reward")
    if alias is not None:
        reward.name = alias
    elif getattr(reward, "name", None) in (None, "reward"):
        reward.name = name
    return reward


def _children(spec: Any, key: str) -> list[Reward]:
    if isinstance(spec, str | Mapping) or not isinstance(spec, Sequence):
        raise RewardSpecError(f"{key!r} needs a list of sub-reward specs, got {spec!r}; {_SPEC_HELP}")
    return [build_from_spec(s) for s in spec]


def _check_keys(spec: Mapping[str, Any], allowed: set[str], key: str) -> None:
    extra = set(spec) - allowed
    if extra:
        raise RewardSpecError(f"{key!r} spec has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")


def build_from_spec(spec: str | Mapping[str, Any] | Reward, **kwargs: Any) -> Reward:
    """Build a reward from a name or spec; see :mod:`nemotron_plugins.rewards.base` for the forms."""
    if isinstance(spec, Reward):
        if kwargs:
            raise RewardSpecError("options cannot be applied to an already built Reward")
        return spec
    if isinstance(spec, str):
        return _build_named(spec, kwargs)
    if not isinstance(spec, Mapping):
        raise RewardSpecError(f"a reward spec must be a string or a mapping, got {type(spec).__name__}; {_SPEC_HELP}")
    if kwargs:
        raise RewardSpecError("keyword options go inside the spec for compositions ({'reward': name, 'options': ...})")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise RewardSpecError(f"'name' must be a string, got {name!r}")
    if "reward" in spec:
        reward_name = spec["reward"]
        options = dict(spec.get("options") or {})
        options.update({k: v for k, v in spec.items() if k not in ("reward", "options", "name")})
        if not isinstance(reward_name, str):
            # A nested spec under "reward" (used inside weighted lists): build it and apply the alias.
            reward = build_from_spec(reward_name, **options)
            if name is not None:
                reward.name = name
            return reward
        return _build_named(reward_name, options, alias=name)
    if "weighted" in spec:
        _check_keys(spec, {"weighted", "name"}, "weighted")
        items = spec["weighted"]
        children: list[Reward] = []
        weights: list[float] = []
        if isinstance(items, Mapping):
            for sub_name, weight in items.items():
                children.append(build_from_spec(sub_name))
                weights.append(weight)
        elif isinstance(items, Sequence) and not isinstance(items, str):
            for j, item in enumerate(items):
                if not isinstance(item, Mapping) or "reward" not in item:
                    raise RewardSpecError(f"weighted[{j}] must be {{'reward': spec, 'weight': w}}, got {item!r}")
                item = dict(item)
                weights.append(item.pop("weight", 1.0))
                children.append(build_from_spec(item))
        else:
            raise RewardSpecError(f"'weighted' needs a mapping name -> weight or a list, got {items!r}; {_SPEC_HELP}")
        return WeightedSum(children, weights, name=name or "weighted")
    if "gate" in spec:
        _check_keys(spec, {"gate", "threshold", "fail_score", "name"}, "gate")
        return Gate(
            _children(spec["gate"], "gate"),
            threshold=spec.get("threshold", 1.0),
            fail_score=spec.get("fail_score", 0.0),
            name=name or "gate",
        )
    if "product" in spec:
        _check_keys(spec, {"product", "name"}, "product")
        return Product(_children(spec["product"], "product"), name=name or "product")
    if "pool" in spec:
        from nemotron_plugins.rewards.pool import PooledReward

        options = {k: v for k, v in spec.items() if k not in ("pool", "name")}
        inner = build_from_spec(spec["pool"])
        try:
            pooled = PooledReward(inner, **options)
        except TypeError as exc:
            raise RewardSpecError(f"'pool' spec: bad options {sorted(options)}: {exc}") from exc
        if name is not None:
            pooled.name = name
        return pooled
    raise RewardSpecError(f"unrecognised reward spec {dict(spec)!r}; {_SPEC_HELP}")
