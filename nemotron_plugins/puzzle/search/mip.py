"""Puzzle's architecture search as a mixed-integer program, solved with HiGHS through :func:`scipy.optimize.milp`.

Variables: one binary ``x[i, j]`` per layer ``i`` and library option ``j``; exactly one option per layer.

Objective: maximise ``sum_ij quality[i, j] x[i, j]`` (quality is higher-is-better, e.g. minus the replace-1-block
KL divergence to the parent's logits).

Constraints for one deployment scenario (:class:`SearchLimits`, one batch size ``b`` and sequence length ``s``):

* memory: ``weight_bytes * (fixed_params + sum params_ij x_ij) + b * s * sum kv_ij x_ij <= memory_bytes``
  (weights plus a full KV cache for ``b`` sequences of ``s`` tokens);
* latency: ``fixed_runtime[b] + sum runtime_ij[b] x_ij <= latency_s`` (``runtime_ij[b]``: seconds block option ``j``
  of layer ``i`` takes on one step of ``b`` sequences);
* throughput: ``b * s / (fixed_runtime[b] + sum runtime_ij[b] x_ij) >= throughput_tokens_per_s``, i.e. the linear
  ``sum runtime_ij[b] x_ij <= b * s / throughput - fixed_runtime[b]``.

Several solutions (:func:`search`): after each solution ``S_k`` a diversity row ``sum_{(i, j) in S_k} x_ij <=
L - min_layer_difference`` forces the next one to differ from it in at least ``min_layer_difference`` layers.

Every solution is checked to be proven optimal (HiGHS status 0 with a relative MIP gap of 0 by default); an
infeasible scenario is explained (:class:`Infeasibility`): each limit that no child can meet on its own, or, when
only the combination is infeasible, the best value of each limit achievable while the other limits hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BlockOption",
    "ConstraintReport",
    "Infeasibility",
    "MIPError",
    "SearchLimits",
    "SearchProblem",
    "SearchResult",
    "Solution",
    "brute_force",
    "search",
]

_CONSTRAINTS = ("memory", "latency", "throughput")

LIMIT_MARGIN = 1e-5
"""Relative margin every limit is tightened by before solving. HiGHS accepts a solution whose rows exceed their
bounds by up to its feasibility tolerance (1e-6 on our unit-scaled rows); the margin guarantees that every returned
child meets the requested limits exactly. :func:`brute_force` applies the same margin."""


class MIPError(ValueError):
    """A malformed search problem (missing runtimes, empty layers, bad limits) or a solver that did not prove
    optimality."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockOption:
    """One library choice for one layer: a (attention, FFN) child block with its score and costs."""

    name: str
    """What the option is, e.g. ``"attn=gqa4 ffn=swiglu1024"``."""
    quality: float
    """Higher is better (e.g. ``-KL`` of the parent with this block swapped in)."""
    params: int
    """Parameters of the block (norms included)."""
    kv_bytes_per_token: int = 0
    """KV-cache bytes one token adds in this block."""
    runtime_s: Mapping[int, float] = field(default_factory=dict)
    """Seconds one step of the block takes, by batch size (needed for latency / throughput limits)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (batch sizes as string keys)."""
        out = asdict(self)
        out["runtime_s"] = {str(k): v for k, v in self.runtime_s.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockOption:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            quality=float(data["quality"]),
            params=int(data["params"]),
            kv_bytes_per_token=int(data.get("kv_bytes_per_token", 0)),
            runtime_s={int(k): float(v) for k, v in dict(data.get("runtime_s", {})).items()},
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchProblem:
    """Per-layer options plus the costs outside the searched blocks."""

    layers: tuple[tuple[BlockOption, ...], ...]
    """``layers[i]``: the options of layer ``i`` (at least one each)."""
    fixed_params: int = 0
    """Parameters outside the searched blocks (embedding, lm head, final norm)."""
    fixed_runtime_s: Mapping[int, float] = field(default_factory=dict)
    """Seconds outside the searched blocks (embedding, lm head), by batch size; 0 when absent."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(tuple(opts) for opts in self.layers))
        if not self.layers:
            raise MIPError("SearchProblem.layers is empty: a search needs at least one layer")
        for i, opts in enumerate(self.layers):
            if not opts:
                raise MIPError(f"SearchProblem.layers[{i}] has no options; every layer needs at least one")
            for j, opt in enumerate(opts):
                if not math.isfinite(opt.quality):
                    raise MIPError(f"layers[{i}][{j}] ({opt.name!r}): quality must be finite, got {opt.quality}")
                if opt.params < 0 or opt.kv_bytes_per_token < 0:
                    raise MIPError(f"layers[{i}][{j}] ({opt.name!r}): params and kv_bytes_per_token must be >= 0")

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "fixed_params": self.fixed_params,
            "fixed_runtime_s": {str(k): v for k, v in self.fixed_runtime_s.items()},
            "layers": [[opt.to_dict() for opt in opts] for opts in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchProblem:
        """Inverse of :meth:`to_dict`."""
        return cls(
            layers=tuple(tuple(BlockOption.from_dict(o) for o in opts) for opts in data["layers"]),
            fixed_params=int(data.get("fixed_params", 0)),
            fixed_runtime_s={int(k): float(v) for k, v in dict(data.get("fixed_runtime_s", {})).items()},
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchLimits:
    """One deployment scenario: batch size, sequence length and the limits to respect (``None``: no limit)."""

    seq_len: int
    """Tokens per sequence (KV cache length and tokens counted for throughput)."""
    batch_size: int = 1
    """Sequences per step."""
    memory_bytes: float | None = None
    """Weights + KV cache limit in bytes."""
    latency_s: float | None = None
    """Limit on the summed runtime of one step at ``batch_size``."""
    throughput_tokens_per_s: float | None = None
    """Lower limit on ``batch_size * seq_len / runtime``."""
    weight_bytes: int = 2
    """Bytes per parameter (2 for bf16)."""

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_size < 1:
            raise MIPError(f"SearchLimits: seq_len and batch_size must be >= 1, got {self.seq_len}, {self.batch_size}")
        for name in ("memory_bytes", "latency_s", "throughput_tokens_per_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise MIPError(f"SearchLimits.{name} must be a positive finite number or None, got {value!r}")

    def active(self) -> tuple[str, ...]:
        """The constraints this scenario imposes, among ``memory``, ``latency``, ``throughput``."""
        values = (self.memory_bytes, self.latency_s, self.throughput_tokens_per_s)
        return tuple(name for name, v in zip(_CONSTRAINTS, values, strict=True) if v is not None)


@dataclass(frozen=True, kw_only=True, slots=True)
class Solution:
    """One chosen child."""

    choices: tuple[int, ...]
    """Option index per layer."""
    names: tuple[str, ...]
    """Option name per layer."""
    quality: float
    """Objective value: summed quality."""
    params: int
    """Total parameters (fixed included)."""
    memory_bytes: float
    """Weights + KV cache for the scenario."""
    runtime_s: float | None
    """Summed runtime at the scenario's batch size (``None`` when runtimes are missing)."""
    throughput_tokens_per_s: float | None
    """``batch * seq / runtime_s``."""
    proven_optimal: bool
    """HiGHS proved optimality (status 0, gap within ``mip_rel_gap``)."""
    mip_gap: float
    """Relative gap HiGHS reported."""
    solve_time_s: float
    """Wall time of this solve."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConstraintReport:
    """How one limit relates to what is achievable."""

    constraint: str
    """``memory``, ``latency`` or ``throughput``."""
    limit: float
    """The requested limit (bytes, seconds, tokens/s)."""
    best_alone: float
    """Best value any child reaches ignoring the other limits."""
    best_with_others: float | None
    """Best value reachable while the other limits hold (``None`` when the others are infeasible together)."""
    binding: bool
    """This limit cannot be met (alone, or together with the others)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Infeasibility:
    """Why no child meets the limits."""

    reports: tuple[ConstraintReport, ...]
    """One report per active limit."""

    def message(self) -> str:
        """A human-readable explanation naming the binding limits and the best achievable values."""
        units = {"memory": "bytes", "latency": "s", "throughput": "tokens/s"}
        lines = []
        for r in self.reports:
            relation = ">=" if r.constraint == "throughput" else "<="
            line = f"{r.constraint} {relation} {r.limit:.6g} {units[r.constraint]}: best alone {r.best_alone:.6g}"
            if r.best_with_others is not None:
                line += f", best with the other limits {r.best_with_others:.6g}"
            else:
                line += ", the other limits are infeasible together"
            lines.append(("BINDING " if r.binding else "ok      ") + line)
        return "no child satisfies the limits:\n  " + "\n  ".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"reports": [asdict(r) for r in self.reports], "message": self.message()}


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchResult:
    """Solutions of one scenario, best first."""

    limits: SearchLimits
    """The scenario."""
    solutions: tuple[Solution, ...]
    """Up to ``num_solutions`` solutions, each differing from all earlier ones."""
    infeasibility: Infeasibility | None
    """Set when the scenario has no solution at all."""
    stopped_early: str | None = None
    """Why fewer solutions than requested came back (diversity exhausted the feasible set)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "limits": asdict(self.limits),
            "solutions": [s.to_dict() for s in self.solutions],
            "infeasibility": None if self.infeasibility is None else self.infeasibility.to_dict(),
            "stopped_early": self.stopped_early,
        }


@dataclass(slots=True)
class _Arrays:
    offsets: np.ndarray  # start index of each layer's variables
    quality: np.ndarray
    params: np.ndarray
    kv: np.ndarray
    runtime: np.ndarray | None
    n: int


def _arrays(problem: SearchProblem, limits: SearchLimits) -> _Arrays:
    sizes = [len(opts) for opts in problem.layers]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = [opt for opts in problem.layers for opt in opts]
    runtime = None
    needs_runtime = limits.latency_s is not None or limits.throughput_tokens_per_s is not None
    have = [limits.batch_size in opt.runtime_s for opt in flat]
    if all(have):
        runtime = np.array([opt.runtime_s[limits.batch_size] for opt in flat], dtype=np.float64)
    elif needs_runtime:
        k = have.index(False)
        i = int(np.searchsorted(offsets, k, side="right") - 1)
        raise MIPError(
            f"layers[{i}][{k - offsets[i]}] ({flat[k].name!r}) has no runtime_s for batch size {limits.batch_size}; "
            f"latency / throughput limits need a runtime for every option (it has {sorted(flat[k].runtime_s)})"
        )
    return _Arrays(
        offsets=offsets,
        quality=np.array([opt.quality for opt in flat], dtype=np.float64),
        params=np.array([opt.params for opt in flat], dtype=np.float64),
        kv=np.array([opt.kv_bytes_per_token for opt in flat], dtype=np.float64),
        runtime=runtime,
        n=len(flat),
    )


def _keep_mask(problem: SearchProblem, limits: SearchLimits, arr: _Arrays, num_solutions: int) -> np.ndarray:
    """Options that can appear in an optimal solution of any of the ``num_solutions`` diverse solves.

    ``a`` dominates ``b`` (same layer) when it is no worse in quality and in every cost the scenario constrains, and
    strictly better in one of them or equal with a lower index (a strict partial order). An option with at least
    ``num_solutions`` dominators is never needed: in the ``k``-th solve (``k < num_solutions`` earlier solutions) at
    most ``k`` of its dominators are earlier choices at that layer, so a maximal dominator outside those is kept (its
    own dominators all lie among the earlier choices), and swapping it in keeps feasibility, every diversity
    distance, and does not lower quality.
    """
    keep = np.ones(arr.n, dtype=bool)
    costs = []
    active = limits.active()
    if "memory" in active:
        costs.append(limits.weight_bytes * arr.params + limits.batch_size * limits.seq_len * arr.kv)
    if ("latency" in active or "throughput" in active) and arr.runtime is not None:
        costs.append(arr.runtime)
    for i in range(problem.num_layers):
        lo, hi = int(arr.offsets[i]), int(arr.offsets[i + 1])
        q = arr.quality[lo:hi]
        c = [v[lo:hi] for v in costs]
        no_worse = q[:, None] >= q[None, :]  # [a, b]: a no worse than b
        better = q[:, None] > q[None, :]
        for v in c:
            no_worse &= v[:, None] <= v[None, :]
            better |= v[:, None] < v[None, :]
        idx = np.arange(hi - lo)
        tie_break = idx[:, None] < idx[None, :]
        dominates = no_worse & (better | tie_break)
        keep[lo:hi] = dominates.sum(axis=0) < num_solutions
    return keep


def _one_hot_rows(arr: _Arrays, num_layers: int) -> Any:
    from scipy.sparse import csr_array

    indptr = arr.offsets
    return csr_array((np.ones(arr.n), np.arange(arr.n), indptr), shape=(num_layers, arr.n))


def _constraint_rows(
    problem: SearchProblem, limits: SearchLimits, arr: _Arrays
) -> dict[str, tuple[np.ndarray, float, float]]:
    """Each active constraint as ``(coefficients, upper bound, offset)``: ``coef @ x + offset <= ub``.

    Memory and the runtime rows are scaled so that the bound is 1 (HiGHS prefers rows of unit size).
    """
    rows: dict[str, tuple[np.ndarray, float, float]] = {}
    fixed_rt = float(problem.fixed_runtime_s.get(limits.batch_size, 0.0))
    if limits.memory_bytes is not None:
        coef = limits.weight_bytes * arr.params + limits.batch_size * limits.seq_len * arr.kv
        rows["memory"] = (coef, float(limits.memory_bytes), float(limits.weight_bytes * problem.fixed_params))
    if limits.latency_s is not None:
        rows["latency"] = (arr.runtime, float(limits.latency_s), fixed_rt)
    if limits.throughput_tokens_per_s is not None:
        # b * s / (fixed + r.x) >= T  <=>  r.x + fixed <= b * s / T
        rows["throughput"] = (
            arr.runtime,
            limits.batch_size * limits.seq_len / limits.throughput_tokens_per_s,
            fixed_rt,
        )
    return rows


def _merged_rows(rows: Mapping[str, tuple[np.ndarray, float, float]]) -> dict[str, tuple[np.ndarray, float, float]]:
    """Latency and throughput bound the same runtime sum: keep only the tighter row (an exact reformulation)."""
    out = dict(rows)
    if "latency" in out and "throughput" in out:
        tighter = "latency" if out["latency"][1] <= out["throughput"][1] else "throughput"
        del out["throughput" if tighter == "latency" else "latency"]
    return out


def _effective_bound(ub: float, offset: float) -> float:
    """The bound the solver enforces on ``coef @ x`` for ``coef @ x + offset <= ub``: lowered by
    :data:`LIMIT_MARGIN` of its size so that HiGHS's feasibility tolerance cannot let a solution exceed a limit."""
    scale = ub - offset
    return scale * (1.0 - LIMIT_MARGIN) if scale > 0 else scale


def _solve(
    objective: np.ndarray,
    arr: _Arrays,
    num_layers: int,
    rows: Mapping[str, tuple[np.ndarray, float, float]],
    extra: Sequence[tuple[np.ndarray, float]],
    *,
    mip_rel_gap: float,
    time_limit_s: float | None,
) -> Any:
    from scipy.optimize import Bounds, LinearConstraint, milp

    constraints = [LinearConstraint(_one_hot_rows(arr, num_layers), 1.0, 1.0)]
    for coef, ub, offset in rows.values():
        scale = ub - offset
        if scale <= 0:  # no child can fit below the fixed cost: keep the row unscaled, it is infeasible anyway
            constraints.append(LinearConstraint(coef[None, :], -np.inf, scale))
        else:  # unit-sized rows: HiGHS's tolerances are absolute
            constraints.append(LinearConstraint(coef[None, :] / scale, -np.inf, _effective_bound(ub, offset) / scale))
    for coef, ub in extra:
        constraints.append(LinearConstraint(coef[None, :], -np.inf, ub))
    options: dict[str, Any] = {"mip_rel_gap": mip_rel_gap, "presolve": True}
    if time_limit_s is not None:
        options["time_limit"] = time_limit_s
    return milp(
        objective,
        integrality=np.ones(arr.n),
        bounds=Bounds(0.0, 1.0),
        constraints=constraints,
        options=options,
    )


def _layer_min(values: np.ndarray, offsets: np.ndarray) -> float:
    return float(np.minimum.reduceat(values, offsets[:-1]).sum())


def _explain(
    problem: SearchProblem,
    limits: SearchLimits,
    arr: _Arrays,
    rows: Mapping[str, tuple[np.ndarray, float, float]],
    *,
    mip_rel_gap: float,
    time_limit_s: float | None,
) -> Infeasibility:
    reports = []
    b_s = limits.batch_size * limits.seq_len
    for name, (coef, ub, offset) in rows.items():
        alone = _layer_min(coef, arr.offsets) + offset
        others = {k: v for k, v in rows.items() if k != name}
        res = _solve(coef, arr, problem.num_layers, others, (), mip_rel_gap=mip_rel_gap, time_limit_s=time_limit_s)
        with_others = None if res.status != 0 else float(res.fun) + offset
        binding = alone > ub * (1 + 1e-9) or with_others is None or with_others > ub * (1 + 1e-9)
        if name == "throughput":  # report tokens/s, not the runtime bound
            limit = float(limits.throughput_tokens_per_s)
            best_alone = b_s / alone if alone > 0 else math.inf
            best_with = None if with_others is None else (b_s / with_others if with_others > 0 else math.inf)
        else:
            limit, best_alone, best_with = ub, alone, with_others
        reports.append(
            ConstraintReport(
                constraint=name, limit=limit, best_alone=best_alone, best_with_others=best_with, binding=binding
            )
        )
    return Infeasibility(reports=tuple(reports))


def _check_limits(limits: SearchLimits, params: int, kv: float, runtime: float | None, k: int) -> None:
    """Re-check a solution against the limits exactly (guards against solver tolerances)."""
    memory = limits.weight_bytes * params + limits.batch_size * limits.seq_len * kv
    problems = []
    if limits.memory_bytes is not None and memory > limits.memory_bytes:
        problems.append(f"memory {memory:.6g} > {limits.memory_bytes:.6g} bytes")
    if runtime is not None and limits.latency_s is not None and runtime > limits.latency_s:
        problems.append(f"latency {runtime:.6g} > {limits.latency_s:.6g} s")
    if (
        runtime is not None
        and limits.throughput_tokens_per_s is not None
        and limits.batch_size * limits.seq_len < limits.throughput_tokens_per_s * runtime
    ):
        problems.append(
            f"throughput {limits.batch_size * limits.seq_len / runtime:.6g} < {limits.throughput_tokens_per_s}"
        )
    if problems:
        raise MIPError(f"solution {k + 1} from HiGHS violates its limits: {'; '.join(problems)}")


def search(
    problem: SearchProblem,
    limits: SearchLimits,
    *,
    num_solutions: int = 1,
    min_layer_difference: int = 1,
    mip_rel_gap: float = 0.0,
    time_limit_s: float | None = None,
    require_optimal: bool = True,
    prune_dominated: bool = True,
) -> SearchResult:
    """Solve the Puzzle MIP for one scenario, then re-solve for diverse alternatives.

    Args:
        problem: per-layer options and fixed costs.
        limits: the scenario (batch size, sequence length, memory / latency / throughput limits).
        num_solutions: how many solutions to return (best first); each next one differs from every earlier one in
            at least ``min_layer_difference`` layers.
        min_layer_difference: the diversity distance, in layers (1 .. number of layers).
        mip_rel_gap: HiGHS relative gap at which a solution counts as optimal (0: exact).
        time_limit_s: per-solve time limit (``None``: none).
        require_optimal: raise when HiGHS stops without proving optimality (time limit, numerical trouble).
        prune_dominated: drop options that provably cannot appear in any of the requested solutions before solving
            (exact, see ``_keep_mask``); ``False`` solves over every option.

    Returns:
        The solutions; when the first solve is infeasible, none and an :class:`Infeasibility` explanation.

    Raises:
        MIPError: malformed inputs, or a solve that is not proven optimal while ``require_optimal``.
    """
    if num_solutions < 1:
        raise MIPError(f"num_solutions must be >= 1, got {num_solutions}")
    if not 1 <= min_layer_difference <= problem.num_layers:
        raise MIPError(f"min_layer_difference must be in 1..{problem.num_layers}, got {min_layer_difference}")
    full = _arrays(problem, limits)
    keep = _keep_mask(problem, limits, full, num_solutions) if prune_dominated else np.ones(full.n, dtype=bool)
    kept = np.flatnonzero(keep)
    arr = _Arrays(
        offsets=np.concatenate([[0], np.cumsum(np.add.reduceat(keep.astype(np.int64), full.offsets[:-1]))]),
        quality=full.quality[kept],
        params=full.params[kept],
        kv=full.kv[kept],
        runtime=None if full.runtime is None else full.runtime[kept],
        n=len(kept),
    )
    rows = _merged_rows(_constraint_rows(problem, limits, arr))
    objective = -arr.quality
    diversity: list[tuple[np.ndarray, float]] = []
    solutions: list[Solution] = []
    stopped = None
    fixed_rt = float(problem.fixed_runtime_s.get(limits.batch_size, 0.0))
    for k in range(num_solutions):
        start = time.perf_counter()
        res = _solve(
            objective, arr, problem.num_layers, rows, diversity, mip_rel_gap=mip_rel_gap, time_limit_s=time_limit_s
        )
        elapsed = time.perf_counter() - start
        if res.status == 2:  # infeasible
            if k == 0:
                return SearchResult(
                    limits=limits,
                    solutions=(),
                    infeasibility=_explain(
                        problem,
                        limits,
                        full,
                        _constraint_rows(problem, limits, full),
                        mip_rel_gap=mip_rel_gap,
                        time_limit_s=time_limit_s,
                    ),
                )
            stopped = f"only {k} solution(s) differ pairwise in >= {min_layer_difference} layers within the limits"
            break
        if res.x is None or (require_optimal and res.status != 0):
            raise MIPError(
                f"HiGHS did not prove optimality for solution {k + 1} (status {res.status}: {res.message}); "
                "raise time_limit_s or mip_rel_gap"
            )
        x = np.rint(res.x)
        picked = arr.offsets[:-1] + np.array(
            [int(np.argmax(x[arr.offsets[i] : arr.offsets[i + 1]])) for i in range(problem.num_layers)]
        )
        choices = tuple(int(c) for c in kept[picked] - full.offsets[:-1])
        runtime = None if arr.runtime is None else float(arr.runtime[picked].sum()) + fixed_rt
        params = int(arr.params[picked].sum()) + problem.fixed_params
        _check_limits(limits, params, float(arr.kv[picked].sum()), runtime, k)
        solutions.append(
            Solution(
                choices=choices,
                names=tuple(problem.layers[i][c].name for i, c in enumerate(choices)),
                quality=float(arr.quality[picked].sum()),
                params=params,
                memory_bytes=float(
                    limits.weight_bytes * params + limits.batch_size * limits.seq_len * arr.kv[picked].sum()
                ),
                runtime_s=runtime,
                throughput_tokens_per_s=None if not runtime else limits.batch_size * limits.seq_len / runtime,
                proven_optimal=res.status == 0,
                mip_gap=float(getattr(res, "mip_gap", 0.0) or 0.0),
                solve_time_s=elapsed,
            )
        )
        row = np.zeros(arr.n)
        row[picked] = 1.0
        diversity.append((row, float(problem.num_layers - min_layer_difference)))
    return SearchResult(limits=limits, solutions=tuple(solutions), infeasibility=None, stopped_early=stopped)


def brute_force(problem: SearchProblem, limits: SearchLimits) -> tuple[float, tuple[int, ...]] | None:
    """Enumerate every child (small problems only) and return the best ``(quality, choices)``, or ``None``.

    The reference the MIP is tested against; limits are applied as :func:`search` applies them (with
    :data:`LIMIT_MARGIN`), written out per child rather than as matrix rows.
    """
    import itertools

    count = math.prod(len(opts) for opts in problem.layers)
    if count > 2_000_000:
        raise MIPError(f"brute force over {count} children is too large (limit 2,000,000)")
    b, s = limits.batch_size, limits.seq_len
    fixed_rt = float(problem.fixed_runtime_s.get(b, 0.0))
    fixed_mem = limits.weight_bytes * problem.fixed_params
    runtime_bounds = []
    if limits.latency_s is not None:
        runtime_bounds.append(_effective_bound(limits.latency_s, fixed_rt))
    if limits.throughput_tokens_per_s is not None:
        runtime_bounds.append(_effective_bound(b * s / limits.throughput_tokens_per_s, fixed_rt))
    best: tuple[float, tuple[int, ...]] | None = None
    for choices in itertools.product(*(range(len(opts)) for opts in problem.layers)):
        opts = [problem.layers[i][c] for i, c in enumerate(choices)]
        if limits.memory_bytes is not None:
            mem = sum(limits.weight_bytes * o.params + b * s * o.kv_bytes_per_token for o in opts)
            if mem > _effective_bound(limits.memory_bytes, fixed_mem):
                continue
        if runtime_bounds:
            runtime = sum(o.runtime_s[b] for o in opts)
            if any(runtime > bound for bound in runtime_bounds):
                continue
        quality = sum(o.quality for o in opts)
        if best is None or quality > best[0]:
            best = (quality, choices)
    return best
