"""Puzzle's architecture search as a mixed-integer program, solved exactly (LP bound + enumeration, HiGHS as fallback).

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

How each solve is proven optimal (:func:`_solve`): options no better in quality and no cheaper in every
constrained cost than enough others of their layer are pruned (exact, ``_keep_mask``); the LP relaxation (HiGHS
through :func:`scipy.optimize.linprog`) gives row prices ``lam >= 0``, a bound ``LB`` and reduced costs ``rc >= 0``
with ``cost(x) >= LB + rc . x`` for every feasible child; a dynamic program over the layers (:func:`_enumerate`)
then enumerates, with dominance between partial children, every child the bound cannot exclude, widening the
threshold until the best child found is certified (its ``cost - LB`` is within the threshold). On Puzzle-sized
instances only ~40 of the 162 layers keep more than their LP choice, so this takes well under a second of CPU per
solve. When the enumeration would hold more than :data:`MAX_STATES` partial children, HiGHS
(:func:`scipy.optimize.milp`, relative gap ``mip_rel_gap``, absolute gap :data:`MIP_ABS_GAP`) solves the options
reduced-cost fixing keeps instead (``Solution.proved_by`` says which proved each solution). An infeasible scenario
is explained (:class:`Infeasibility`): each limit that no child can meet on its own, or, when
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
    """Relative gap proven (0 unless ``mip_rel_gap`` > 0 allowed one)."""
    solve_time_s: float
    """Wall time of this solve."""
    proved_by: str = "enumeration"
    """What proved optimality: ``"enumeration"`` (the LP bound plus exact enumeration of every child the bound cannot
    exclude) or ``"highs"`` (HiGHS branch and bound on the options reduced-cost fixing keeps)."""

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


MIP_FEASIBILITY_TOL = 1e-9
"""HiGHS's ``mip_feasibility_tolerance`` (its default, set explicitly): how far a row may exceed its bound in a
solution HiGHS accepts. Our limit rows are unit-scaled and tightened by :data:`LIMIT_MARGIN` > this tolerance."""

MIP_ABS_GAP = 1e-9
"""Absolute objective gap (in quality units) at which HiGHS stops (its default is 1e-6): two children whose summed
qualities differ by less than this count as tied; every other child is strictly ranked."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What :func:`_solve` found (a subset of scipy's ``OptimizeResult``, for the full variable set)."""

    status: int
    """0: optimal; 2: infeasible; anything else: stopped without a proof (time limit, numerical trouble)."""
    message: str
    """The solver's message."""
    x: np.ndarray | None
    """The solution over all variables (``None`` unless a feasible point was found)."""
    fun: float
    """Objective value of ``x`` (``nan`` without one)."""
    mip_gap: float
    """Relative gap proven (the enumeration's, or HiGHS's on the restricted problem)."""
    core_size: int
    """Variables of the last restricted MIP HiGHS solved (0: none, the enumeration proved the result)."""
    method: str
    """``"enumeration"`` or ``"highs"``: what proved the result."""


def _inequalities(
    arr: _Arrays, rows: Mapping[str, tuple[np.ndarray, float, float]], extra: Sequence[tuple[np.ndarray, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """The ``<=`` rows as a dense ``(m, n)`` matrix and bounds, limit rows scaled to unit size and tightened by
    :data:`LIMIT_MARGIN` (HiGHS's tolerances are absolute)."""
    mat, bound = [], []
    for coef, ub, offset in rows.values():
        scale = ub - offset
        if scale <= 0:  # no child fits below the fixed cost: keep the row unscaled, it is infeasible anyway
            mat.append(coef)
            bound.append(scale)
        else:
            mat.append(coef / scale)
            bound.append(_effective_bound(ub, offset) / scale)
    for coef, ub in extra:
        mat.append(coef)
        bound.append(ub)
    if not mat:
        return np.zeros((0, arr.n)), np.zeros(0)
    return np.array(mat, dtype=np.float64), np.array(bound, dtype=np.float64)


def _milp_on(
    objective: np.ndarray,
    layer_of: np.ndarray,
    num_layers: int,
    a_ub: np.ndarray,
    b_ub: np.ndarray,
    cols: np.ndarray,
    *,
    mip_rel_gap: float,
    mip_abs_gap: float,
    time_limit_s: float | None,
) -> Any:
    """HiGHS on the variables ``cols`` only (the others fixed to 0)."""
    import warnings

    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    one_hot = csr_array((np.ones(len(cols)), (layer_of[cols], np.arange(len(cols)))), shape=(num_layers, len(cols)))
    constraints = [LinearConstraint(one_hot, 1.0, 1.0)]
    if len(b_ub):
        constraints.append(LinearConstraint(a_ub[:, cols], -np.inf, b_ub))
    options: dict[str, Any] = {
        "mip_rel_gap": mip_rel_gap,
        "presolve": True,
        "mip_abs_gap": mip_abs_gap,
        "mip_feasibility_tolerance": MIP_FEASIBILITY_TOL,
    }
    if time_limit_s is not None:
        options["time_limit"] = time_limit_s
    with warnings.catch_warnings():  # scipy warns that these two options go to HiGHS verbatim, which we want
        warnings.filterwarnings("ignore", message="Unrecognized options detected", category=RuntimeWarning)
        return milp(
            objective[cols],
            integrality=np.ones(len(cols)),
            bounds=Bounds(0.0, 1.0),
            constraints=constraints,
            options=options,
        )


def _lagrangian(
    objective: np.ndarray, layer_of: np.ndarray, offsets: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """The LP relaxation's bound and reduced costs, or ``None`` when the relaxation is infeasible.

    With the LP's row duals ``lam >= 0`` (any ``lam >= 0`` would do: the bound below holds for every one, so its
    validity does not depend on the LP solver's accuracy), ``m_i = min_{j in layer i} (c_j + lam . a_j)``,
    ``LB = sum_i m_i - lam . b`` and ``rc_j = c_j + lam . a_j - m_i >= 0``. For every ``x`` with one option per
    layer and ``A x <= b + eps``: ``c . x >= c . x + lam . (A x - b - eps) = LB + rc . x - lam . eps``. So a child
    using option ``j`` costs at least ``LB + rc_j - eps * sum(lam)``.

    Returns:
        ``(LB, rc, lam)``.
    """
    from scipy.optimize import linprog
    from scipy.sparse import csr_array

    n = len(objective)
    num_layers = len(offsets) - 1
    one_hot = csr_array((np.ones(n), (layer_of, np.arange(n))), shape=(num_layers, n))
    if len(b_ub):
        lp = linprog(
            objective, A_ub=a_ub, b_ub=b_ub, A_eq=one_hot, b_eq=np.ones(num_layers), bounds=(0, None), method="highs"
        )
        if lp.status == 2:
            return None
        lam = np.maximum(-np.asarray(lp.ineqlin.marginals), 0.0) if lp.status == 0 else np.zeros(len(b_ub))
    else:
        lam = np.zeros(0)
    priced = objective + lam @ a_ub if len(b_ub) else objective.copy()
    best = np.minimum.reduceat(priced, offsets[:-1])
    bound = float(best.sum() - lam @ b_ub) if len(b_ub) else float(best.sum())
    return bound, priced - best[layer_of], lam


CORE_START = 2.0
"""The first restricted MIP of the HiGHS path holds about ``CORE_START`` options per layer (smallest reduced cost)."""

START_OPTIONS = 16
"""The first enumeration pass admits the options of the ``START_OPTIONS`` smallest positive reduced costs."""

TAU_GROWTH = 1.5
"""Factor the enumeration threshold grows by between passes (the cost of a pass grows fast with it)."""

MAX_STATES = 100_000
"""Partial children the enumeration keeps per layer before handing the solve to HiGHS (past this, the enumeration
is slower than HiGHS on the reduced-cost-fixed problem)."""


@dataclass(frozen=True, slots=True)
class _Relaxation:
    """The LP bound of one solve and what the exact methods need from it."""

    layer_of: np.ndarray
    """Layer index of every variable."""
    a_ub: np.ndarray
    """``(m, n)`` ``<=`` rows (unit-scaled limit rows first, then the diversity rows)."""
    b_ub: np.ndarray
    """Their bounds."""
    num_limit_rows: int
    """How many of the rows are limit rows (the rest are diversity rows)."""
    lower: float
    """``LB``: no feasible child costs less."""
    reduced: np.ndarray
    """``rc_j >= 0``: a feasible child using option ``j`` costs at least ``LB + rc_j`` (see :func:`_lagrangian`)."""
    duals: np.ndarray
    """The row prices ``lam >= 0``."""
    tol: float
    """Floating-point allowance on ``LB + rc . x <= c . x``."""


DOMINANCE_BINS = 8
"""Bins of the second limit row's usage used to find dominators among partial children that could still violate it."""


def _dominated(cost: np.ndarray, level: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``out[p]``: some earlier ``q`` of the same (contiguous, non-decreasing) ``group`` with a lower ``level``, or
    level 0 both, has ``cost[q] <= cost[p]``. Running minima per group on exact ranks (no floating-point offsets):
    keys are ``(groups after this one) * width + rank``, so earlier groups have larger keys and the running minimum
    of the keys before ``p`` is from ``p``'s own group exactly when that group has an eligible earlier member."""
    values, rank = np.unique(cost, return_inverse=True)
    never = len(values)  # the rank of a child that may not dominate: above every cost, below the next group
    offset = (int(group.max(initial=0)) - group) * (len(values) + 1)
    out = np.zeros(len(cost), dtype=bool)
    for lvl in np.unique(level):
        eligible = level < lvl if lvl > 0 else level == 0
        running = np.full(len(cost), np.iinfo(np.int64).max)
        running[1:] = np.minimum.accumulate((offset + np.where(eligible, rank, never))[:-1])
        out |= (level == lvl) & (running <= offset + rank)
    return out


def _enumerate(
    objective: np.ndarray,
    rel: _Relaxation,
    offsets: np.ndarray,
    tau: float,
    cutoff: float,
    deadline: float | None,
) -> tuple[float, np.ndarray] | str | None:
    """A feasible child at least as cheap as every feasible child ``x`` with ``c . x - LB <= tau``, by dynamic
    programming over the layers.

    Layers whose only option with ``rc_j <= tau`` is their LP choice are fixed; the others are expanded one at a
    time, keeping every partial child that (a) can still be completed within the rows (its usage plus the smallest
    usage of the remaining layers fits), (b) has ``rc`` sum ``<= tau`` (reduced costs are >= 0, so the sum only
    grows) and (c) can still cost ``<= cutoff`` (its cost plus the cheapest option of each remaining layer; a child
    of that cost is already known). A partial child ``s'`` is dropped when another one ``s`` of the same diversity
    status (equal usage of every diversity row that can still be violated) has objective ``<= s'``, usage ``<=`` on
    the key limit row (largest price), and on the other limit row either cannot violate it whatever the remaining
    layers pick or has a strictly smaller usage (a lower of :data:`DOMINANCE_BINS` quantile bins of that usage):
    every completion ``y`` of ``s'`` is then a feasible completion of ``s``, no costlier, and still within ``tau``
    when ``c . (s' + y) - LB <= tau`` (``rc . x <= c . x - LB`` for every feasible ``x``). So for any feasible
    ``x`` with ``c . x - LB <= tau`` (and ``c . x <= cutoff``) a chain of such swaps ends at a kept child no
    costlier, and the returned child is at least as cheap. With ``tau`` at least every child's ``rc`` sum it is
    the cheapest feasible child outright (or the cheapest below the cutoff).

    Returns:
        ``(cost, option index per layer)``; ``None`` when no such child is feasible; ``"states"`` when more than
        :data:`MAX_STATES` partial children survive a layer, ``"time"`` past ``deadline``.
    """
    a_ub, b_ub = rel.a_ub, rel.b_ub
    m = len(b_ub)
    num_layers = len(offsets) - 1
    admitted = np.flatnonzero(rel.reduced <= tau)  # every layer keeps its LP choice (rc = 0)
    counts = np.bincount(rel.layer_of[admitted], minlength=num_layers)
    first = np.concatenate([[0], np.cumsum(counts)])
    free = np.flatnonzero(counts > 1).tolist()
    single = np.flatnonzero(counts == 1)
    fixed = admitted[first[single]]
    cand = {i: admitted[first[i] : first[i + 1]] for i in free}
    eps = 1e-12  # rows are unit-scaled; the final child is re-checked against the exact limits
    bound = b_ub + eps
    lows = np.array([a_ub[:, cand[i]].min(axis=1) for i in free]).reshape(len(free), m)
    highs = np.array([a_ub[:, cand[i]].max(axis=1) for i in free]).reshape(len(free), m)
    rest_low = np.concatenate([np.cumsum(lows[::-1], axis=0)[::-1], np.zeros((1, m))])
    cheapest = np.array([objective[cand[i]].min() for i in free])
    rest_cost = np.append(np.cumsum(cheapest[::-1])[::-1], 0.0) - rel.tol
    rest_high = np.concatenate([np.cumsum(highs[::-1], axis=0)[::-1], np.zeros((1, m))])
    limit_rows = np.arange(rel.num_limit_rows)
    key = int(limit_rows[np.argmax(rel.duals[limit_rows])]) if len(limit_rows) else -1
    others = limit_rows[limit_rows != key]
    diversity = np.arange(rel.num_limit_rows, m)
    cost = np.array([objective[fixed].sum()])
    use = a_ub[:, fixed].sum(axis=1)[None, :]
    spent = np.array([rel.reduced[fixed].sum()])
    if np.any(use[0] + rest_low[0] > bound):
        return None
    history = []
    for t, i in enumerate(free):
        if deadline is not None and time.perf_counter() > deadline:
            return "time"
        opts = cand[i]
        new_cost = (cost[:, None] + objective[opts][None, :]).ravel()
        new_use = (use[:, None, :] + a_ub[:, opts].T[None, :, :]).reshape(len(new_cost), m)
        new_spent = (spent[:, None] + rel.reduced[opts][None, :]).ravel()
        alive = np.flatnonzero(
            (new_spent <= tau)
            & (new_cost + rest_cost[t + 1] <= cutoff)
            & np.all(new_use + rest_low[t + 1] <= bound, axis=1)
        )
        if not len(alive):
            return None
        new_cost, new_use, new_spent = new_cost[alive], new_use[alive], new_spent[alive]
        parent, chosen = alive // len(opts), opts[alive % len(opts)]
        # diversity status: -1 once a row can no longer be violated, else its usage
        status = new_use[:, diversity]
        status = np.where(status + rest_high[t + 1][diversity] <= bound[diversity], -1.0, status)
        safe = np.all(new_use[:, others] + rest_high[t + 1][others] <= bound[others], axis=1)
        level = np.where(safe, 0, 1)
        if len(others) == 1 and not safe.all():  # finer levels: a lower one has a strictly smaller usage
            second = new_use[:, others[0]]
            edges = np.quantile(second[~safe], np.linspace(0.0, 1.0, DOMINANCE_BINS + 1)[1:-1])
            level = np.where(safe, 0, 1 + np.searchsorted(edges, second, side="right"))
        key_use = new_use[:, key] if key >= 0 else np.zeros(len(new_cost))
        order = np.lexsort((new_cost, key_use, *status.T[::-1]))
        group = np.zeros(len(order), dtype=np.int64)
        if status.shape[1]:
            sorted_status = status[order]
            group[1:] = np.cumsum(np.any(sorted_status[1:] != sorted_status[:-1], axis=1))
        keep = ~_dominated(new_cost[order], level[order], group)
        survivors = order[keep]
        if len(survivors) > MAX_STATES:
            return "states"
        cost, use, spent = new_cost[survivors], new_use[survivors], new_spent[survivors]
        history.append((parent[survivors], chosen[survivors]))
    k = int(np.argmin(cost))
    best = float(cost[k])
    picked = np.empty(num_layers, dtype=np.int64)
    picked[single] = fixed
    for (parent, chosen), i in zip(reversed(history), reversed(free), strict=True):
        picked[i] = chosen[k]
        k = int(parent[k])
    return best, picked


def _solve(
    objective: np.ndarray,
    arr: _Arrays,
    num_layers: int,
    rows: Mapping[str, tuple[np.ndarray, float, float]],
    extra: Sequence[tuple[np.ndarray, float]],
    *,
    mip_rel_gap: float,
    mip_abs_gap: float = MIP_ABS_GAP,
    time_limit_s: float | None,
) -> _Outcome:
    """Minimise ``objective . x`` (one option per layer, ``rows`` and ``extra`` as ``<=`` rows) exactly.

    1. The LP relaxation gives a bound ``LB`` and reduced costs ``rc >= 0`` such that every feasible child ``x``
       costs ``c . x >= LB + rc . x`` (:func:`_lagrangian`).
    2. :func:`_enumerate` finds the cheapest feasible child among those with ``rc . x <= tau``, starting from a
       small ``tau``. If it finds one of cost ``v`` with ``v - LB + tol <= tau``, ``v`` is optimal: any cheaper
       child has ``rc . x <= c . x - LB < v - LB <= tau`` and was enumerated. If it finds one with a larger ``v``,
       ``v`` becomes a cutoff (no pass keeps a partial child that cannot end below it) and ``tau`` grows by
       :data:`TAU_GROWTH`, at most to ``v - LB + tol`` (that pass proves its result). Once ``tau`` covers every child
       (the sum of the largest ``rc`` of each layer), the pass's result is optimal, or finding none proves
       infeasibility.
    3. If the enumeration outgrows :data:`MAX_STATES` (or the LP relaxation is not solved to optimality), HiGHS
       solves it instead (:func:`_solve_highs`, also exact); an infeasible LP goes to HiGHS on the full problem,
       which confirms the infeasibility.
    """
    start = time.perf_counter()
    deadline = None if time_limit_s is None else start + time_limit_s
    kwargs = {"mip_rel_gap": mip_rel_gap, "mip_abs_gap": mip_abs_gap, "time_limit_s": time_limit_s}
    layer_of = np.repeat(np.arange(num_layers), np.diff(arr.offsets))
    a_ub, b_ub = _inequalities(arr, rows, extra)
    lagrangian = _lagrangian(objective, layer_of, arr.offsets, a_ub, b_ub)
    if lagrangian is None:
        return _solve_highs(objective, arr, num_layers, a_ub, b_ub, None, **kwargs)
    lower, reduced, duals = lagrangian
    scale = float(np.abs(objective).max(initial=0.0)) * num_layers + abs(lower) + float(duals @ np.abs(b_ub))
    rel = _Relaxation(
        layer_of=layer_of,
        a_ub=a_ub,
        b_ub=b_ub,
        num_limit_rows=len(rows),
        lower=lower,
        reduced=reduced,
        duals=duals,
        tol=1e-9 * (1.0 + scale) + 1e-12 * float(duals.sum()),
    )
    everything = float(np.maximum.reduceat(reduced, arr.offsets[:-1]).sum()) + rel.tol  # every child has rc.x <= this
    # start with about START_OPTIONS options besides the LP's choices: cheap, then widen
    ranked = np.sort(reduced[reduced > rel.tol])
    tau = float(ranked[min(len(ranked), START_OPTIONS) - 1]) if len(ranked) else everything
    cutoff = math.inf
    while True:
        found = _enumerate(objective, rel, arr.offsets, tau, cutoff, deadline)
        if found == "time":
            return _Outcome(1, "time limit reached", None, math.nan, math.inf, arr.n, "enumeration")
        if found == "states":
            return _solve_highs(objective, arr, num_layers, a_ub, b_ub, rel, **kwargs)
        if found is not None:
            value, picked = found
            # any cheaper child x' has rc.x' <= c.x' - LB (+ rounding < tol / 2) < value - LB + tol / 2 <= tau;
            # with tau >= everything, every child was enumerated
            # (with mip_rel_gap > 0: no child outside the threshold is cheaper than LB + tau, within the gap of value)
            if value - lower + 0.5 * rel.tol <= tau + mip_rel_gap * abs(value) or tau >= everything:
                x = np.zeros(arr.n)
                x[picked] = 1.0
                gap = 0.0 if tau >= everything else max(0.0, value - lower - tau) / max(abs(value), 1e-300)
                return _Outcome(0, "optimal (enumeration)", x, value, gap, 0, "enumeration")
            cutoff = min(cutoff, value)
        elif tau >= everything:
            return _Outcome(2, "infeasible (every child enumerated)", None, math.nan, 0.0, 0, "enumeration")
        elif cutoff < math.inf:  # the known child vanished: rounding at the cutoff; let HiGHS decide
            return _solve_highs(objective, arr, num_layers, a_ub, b_ub, rel, **kwargs)
        tau = min(TAU_GROWTH * tau, everything, cutoff - lower + rel.tol)


def _solve_highs(
    objective: np.ndarray,
    arr: _Arrays,
    num_layers: int,
    a_ub: np.ndarray,
    b_ub: np.ndarray,
    rel: _Relaxation | None,
    *,
    mip_rel_gap: float,
    mip_abs_gap: float,
    time_limit_s: float | None,
) -> _Outcome:
    """HiGHS with reduced-cost fixing (a core method); ``rel=None``: HiGHS on every variable.

    HiGHS solves the *core* ``{j : rc_j <= tau}`` (about :data:`CORE_START` options per layer to start); an
    infeasible core is widened 4x. With a core optimum ``UB``, no child using an option with
    ``LB + rc_j > UB + tol`` can be optimal; if every other option is in the core, ``UB`` is optimal for the full
    problem, else they join the core and one more solve (whose core holds the old incumbent) is.
    """
    kwargs = {"mip_rel_gap": mip_rel_gap, "mip_abs_gap": mip_abs_gap, "time_limit_s": time_limit_s}
    layer_of = np.repeat(np.arange(num_layers), np.diff(arr.offsets))
    if rel is None:
        core = np.ones(arr.n, dtype=bool)
        reduced, lower, tol, tau = np.zeros(arr.n), -math.inf, 0.0, 0.0
    else:
        reduced, lower = rel.reduced, rel.lower
        # HiGHS accepts rows up to its feasibility tolerance over the bound: widen the certificate by lam . eps
        tol = rel.tol + MIP_FEASIBILITY_TOL * float(rel.duals.sum())
        count = min(arr.n - 1, int(CORE_START * num_layers))
        tau = float(np.partition(reduced, count)[count])
        core = reduced <= tau
    while True:
        cols = np.flatnonzero(core)
        res = _milp_on(objective, layer_of, num_layers, a_ub, b_ub, cols, **kwargs)
        if res.status == 2 and not core.all():
            tau = max(4.0 * tau, 4.0 * float(np.max(reduced[core])), 1e-12)
            core = reduced <= tau
            if core.sum() > arr.n // 2:
                core[:] = True
            continue
        x = None
        if res.x is not None:
            x = np.zeros(arr.n)
            x[cols] = res.x
        if res.status != 0 or core.all():
            break
        needed = reduced <= float(res.fun) - lower + tol
        if not (needed & ~core).any():
            break
        core |= needed
    return _Outcome(
        status=int(res.status),
        message=str(res.message),
        x=x,
        fun=float(objective @ x) if x is not None else math.nan,
        mip_gap=float(getattr(res, "mip_gap", 0.0) or 0.0),
        core_size=len(cols),
        method="highs",
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
        res = _solve(
            coef,
            arr,
            problem.num_layers,
            others,
            (),
            mip_rel_gap=mip_rel_gap,
            mip_abs_gap=MIP_ABS_GAP * max(1.0, float(np.abs(coef).max(initial=0.0))),
            time_limit_s=time_limit_s,
        )
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
        mip_rel_gap: relative gap at which a solution counts as optimal (0: exact): the enumeration stops once no
            child it has not enumerated can be better by more than this fraction; HiGHS (the fallback) gets it as
            its ``mip_rel_gap``.
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
                f"the solver did not prove optimality for solution {k + 1} (status {res.status}: {res.message}); "
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
                mip_gap=res.mip_gap,
                solve_time_s=elapsed,
                proved_by=res.method,
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
