"""The Puzzle MIP (HiGHS through scipy) against brute force, diversity, and infeasibility explanations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemotron_plugins.puzzle.search import mip
from nemotron_plugins.puzzle.search.mip import (
    LIMIT_MARGIN,
    BlockOption,
    MIPError,
    SearchLimits,
    SearchProblem,
    brute_force,
    search,
)


def _random_problem(seed: int, layers: int = 5, options: int = 4) -> SearchProblem:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(layers):
        row = []
        for j in range(options):
            row.append(
                BlockOption(
                    name=f"l{i}o{j}",
                    quality=float(-rng.exponential(1.0)),
                    params=int(rng.integers(0, 1000)),
                    kv_bytes_per_token=int(rng.integers(0, 64)),
                    runtime_s={1: float(rng.uniform(0.1, 1.0)), 4: float(rng.uniform(0.2, 2.0))},
                )
            )
        out.append(tuple(row))
    return SearchProblem(layers=tuple(out), fixed_params=100, fixed_runtime_s={1: 0.05, 4: 0.1})


def _limits(problem: SearchProblem, seed: int, batch: int) -> SearchLimits:
    rng = np.random.default_rng(1000 + seed)
    max_params = problem.fixed_params + sum(max(o.params for o in opts) for opts in problem.layers)
    max_kv = sum(max(o.kv_bytes_per_token for o in opts) for opts in problem.layers)
    max_rt = sum(max(o.runtime_s[batch] for o in opts) for opts in problem.layers)
    return SearchLimits(
        seq_len=16,
        batch_size=batch,
        memory_bytes=float(rng.uniform(0.4, 0.8) * (2 * max_params + batch * 16 * max_kv)),
        latency_s=float(rng.uniform(0.5, 0.9) * max_rt),
        throughput_tokens_per_s=float(batch * 16 / (rng.uniform(0.5, 0.9) * max_rt)),
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("prune", [True, False])
def test_mip_equals_brute_force(seed: int, prune: bool) -> None:
    problem = _random_problem(seed)
    limits = _limits(problem, seed, batch=(1, 4)[seed % 2])
    expected = brute_force(problem, limits)
    result = search(problem, limits, prune_dominated=prune)
    if expected is None:
        assert result.infeasibility is not None and not result.solutions
        return
    (best,) = result.solutions
    assert best.proven_optimal
    assert best.quality == pytest.approx(expected[0], abs=1e-9)
    # the reported costs are those of the chosen options
    opts = [problem.layers[i][c] for i, c in enumerate(best.choices)]
    assert best.params == problem.fixed_params + sum(o.params for o in opts)
    assert best.quality == pytest.approx(sum(o.quality for o in opts))
    assert best.memory_bytes <= limits.memory_bytes
    assert best.runtime_s <= limits.latency_s


@pytest.mark.parametrize("seed", range(4))
def test_diverse_solutions_are_the_best_at_distance(seed: int) -> None:
    problem = _random_problem(seed, layers=4, options=3)
    limits = SearchLimits(seq_len=16, memory_bytes=1e9)  # loose: every child fits
    result = search(problem, limits, num_solutions=3, min_layer_difference=2)
    assert len(result.solutions) == 3
    chosen = [s.choices for s in result.solutions]
    for a, b in itertools.combinations(chosen, 2):
        assert sum(x != y for x, y in zip(a, b, strict=True)) >= 2
    # each solution is the best child at distance >= 2 from the earlier ones (brute force)
    everything = list(itertools.product(*(range(3) for _ in range(4))))

    def quality(c: tuple[int, ...]) -> float:
        return sum(problem.layers[i][j].quality for i, j in enumerate(c))

    for k, sol in enumerate(result.solutions):
        allowed = [
            c for c in everything if all(sum(x != y for x, y in zip(c, p, strict=True)) >= 2 for p in chosen[:k])
        ]
        assert sol.quality == pytest.approx(max(quality(c) for c in allowed), abs=1e-9)
        assert all(s.proven_optimal for s in result.solutions)


def test_diversity_exhausts_the_feasible_set() -> None:
    problem = _random_problem(0, layers=2, options=2)
    result = search(problem, SearchLimits(seq_len=4), num_solutions=5, min_layer_difference=2)
    assert len(result.solutions) == 2  # 4 children, at pairwise distance 2: only 2 of them
    assert "only 2 solution(s)" in result.stopped_early


def test_infeasible_alone_names_the_constraint_and_best_value() -> None:
    problem = _random_problem(3)
    min_params = problem.fixed_params + sum(min(o.params for o in opts) for opts in problem.layers)
    limits = SearchLimits(seq_len=1, memory_bytes=2.0 * min_params - 1.0, weight_bytes=2)
    # with kv > 0 somewhere the true minimum memory is >= 2 * min_params; the report must give the exact minimum
    result = search(problem, limits)
    assert not result.solutions
    (report,) = result.infeasibility.reports
    assert report.constraint == "memory" and report.binding
    best = (
        min(
            sum(2 * problem.layers[i][j].params + problem.layers[i][j].kv_bytes_per_token for i, j in enumerate(c))
            for c in itertools.product(*(range(4) for _ in range(5)))
        )
        + 2 * problem.fixed_params
    )
    assert report.best_alone == pytest.approx(best)
    assert "BINDING memory" in result.infeasibility.message()


def test_infeasible_only_together_reports_best_with_others() -> None:
    # layer options: small-memory-but-slow or fast-but-big; each limit alone can be met, not both
    slow_small = BlockOption(name="slow", quality=-1.0, params=1, runtime_s={1: 10.0})
    fast_big = BlockOption(name="fast", quality=-1.0, params=100, runtime_s={1: 1.0})
    problem = SearchProblem(layers=((slow_small, fast_big),) * 3)
    limits = SearchLimits(seq_len=1, memory_bytes=2 * 3 * 1.0 + 1, latency_s=3 * 1.0 + 0.5, weight_bytes=2)
    result = search(problem, limits)
    reports = {r.constraint: r for r in result.infeasibility.reports}
    assert reports["memory"].best_alone == pytest.approx(6.0)
    assert reports["latency"].best_alone == pytest.approx(3.0)
    # under latency <= 3.5 every layer must be fast: memory 600 bytes; under memory <= 7 every layer slow: 30 s
    assert reports["memory"].best_with_others == pytest.approx(600.0)
    assert reports["latency"].best_with_others == pytest.approx(30.0)
    assert reports["memory"].binding and reports["latency"].binding


def test_throughput_limit_is_reported_in_tokens_per_second() -> None:
    opt = BlockOption(name="only", quality=0.0, params=1, runtime_s={2: 1.0})
    problem = SearchProblem(layers=((opt,),) * 2)
    limits = SearchLimits(seq_len=8, batch_size=2, throughput_tokens_per_s=100.0)
    (report,) = search(problem, limits).infeasibility.reports
    assert report.constraint == "throughput"
    assert report.best_alone == pytest.approx(2 * 8 / 2.0)  # 16 tokens over 2 s


def test_errors_name_the_option_and_field() -> None:
    opt = BlockOption(name="no-runtime", quality=0.0, params=1)
    with pytest.raises(MIPError, match=r"layers\[0\]\[0\] \('no-runtime'\) has no runtime_s for batch size 1"):
        search(SearchProblem(layers=((opt,),)), SearchLimits(seq_len=1, latency_s=1.0))
    with pytest.raises(MIPError, match=r"layers\[1\] has no options"):
        SearchProblem(layers=((opt,), ()))
    with pytest.raises(MIPError, match="memory_bytes must be a positive"):
        SearchLimits(seq_len=1, memory_bytes=-1.0)


def test_problem_round_trips_through_dict() -> None:
    problem = _random_problem(1)
    assert SearchProblem.from_dict(problem.to_dict()) == problem


# --- exactness of the enumeration (LP bound + reduced-cost enumeration) against brute force -------------------------


@st.composite
def _tied_problems(draw: st.DrawFn) -> tuple[SearchProblem, SearchLimits]:
    """Small problems with coarse coefficient grids, so that exact ties in quality and in cost are common."""
    num_layers = draw(st.integers(1, 5))
    layers = []
    for i in range(num_layers):
        row = []
        for j in range(draw(st.integers(1, 4))):
            row.append(
                BlockOption(
                    name=f"l{i}o{j}",
                    quality=draw(st.integers(-12, 0)) / 4.0,
                    params=draw(st.integers(0, 20)) * 50,
                    kv_bytes_per_token=draw(st.integers(0, 4)) * 8,
                    runtime_s={2: draw(st.integers(1, 10)) / 10.0},
                )
            )
        layers.append(tuple(row))
    problem = SearchProblem(layers=tuple(layers), fixed_params=draw(st.integers(0, 100)), fixed_runtime_s={2: 0.05})
    max_mem = 2 * (problem.fixed_params + sum(max(o.params for o in opts) for opts in layers)) + 2 * 4 * sum(
        max(o.kv_bytes_per_token for o in opts) for opts in layers
    )
    max_rt = 0.05 + sum(max(o.runtime_s[2] for o in opts) for opts in layers)
    fractions = st.one_of(st.none(), st.floats(0.2, 1.1))
    mem, lat, thr = draw(fractions), draw(fractions), draw(fractions)
    limits = SearchLimits(
        seq_len=4,
        batch_size=2,
        memory_bytes=None if mem is None else mem * max_mem + 1.0,
        latency_s=None if lat is None else lat * max_rt,
        throughput_tokens_per_s=None if thr is None else 8 / (thr * max_rt),
    )
    return problem, limits


def _feasible_children(problem: SearchProblem, limits: SearchLimits) -> list[tuple[float, tuple[int, ...]]]:
    """Every child meeting the limits (tightened by LIMIT_MARGIN as search applies them), with its quality."""
    b, s = limits.batch_size, limits.seq_len
    fixed_rt = problem.fixed_runtime_s.get(b, 0.0)
    out = []
    for choices in itertools.product(*(range(len(opts)) for opts in problem.layers)):
        opts = [problem.layers[i][c] for i, c in enumerate(choices)]
        mem = sum(limits.weight_bytes * o.params + b * s * o.kv_bytes_per_token for o in opts)
        runtime = sum(o.runtime_s[b] for o in opts)
        fixed_mem = limits.weight_bytes * problem.fixed_params
        if limits.memory_bytes is not None and mem > (limits.memory_bytes - fixed_mem) * (1 - LIMIT_MARGIN):
            continue
        if limits.latency_s is not None and runtime > (limits.latency_s - fixed_rt) * (1 - LIMIT_MARGIN):
            continue
        if limits.throughput_tokens_per_s is not None and runtime > (
            b * s / limits.throughput_tokens_per_s - fixed_rt
        ) * (1 - LIMIT_MARGIN):
            continue
        out.append((sum(o.quality for o in opts), choices))
    return out


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(case=_tied_problems(), num_solutions=st.integers(1, 3), distance=st.integers(1, 2))
def test_enumeration_equals_brute_force_with_ties(
    case: tuple[SearchProblem, SearchLimits], num_solutions: int, distance: int
) -> None:
    """Every solution of the diversity loop is the best child at >= ``distance`` layers from the earlier ones."""
    problem, limits = case
    distance = min(distance, problem.num_layers)
    children = _feasible_children(problem, limits)
    result = search(problem, limits, num_solutions=num_solutions, min_layer_difference=distance)
    if not children:
        assert result.infeasibility is not None and not result.solutions
        return
    assert result.infeasibility is None
    expected = brute_force(problem, limits)
    assert expected is not None and result.solutions[0].quality == pytest.approx(expected[0], abs=1e-12)
    earlier: list[tuple[int, ...]] = []
    for sol in result.solutions:
        allowed = [
            q for q, c in children if all(sum(x != y for x, y in zip(c, p, strict=True)) >= distance for p in earlier)
        ]
        assert sol.proven_optimal and sol.proved_by == "enumeration"
        assert sol.quality == pytest.approx(max(allowed), abs=1e-12)
        assert sol.quality == pytest.approx(sum(problem.layers[i][c].quality for i, c in enumerate(sol.choices)))
        assert sol.choices in {c for _, c in children}
        earlier.append(sol.choices)
    if len(result.solutions) < num_solutions:  # the diversity loop ran out: nothing is left at that distance
        assert not [
            c for _, c in children if all(sum(x != y for x, y in zip(c, p, strict=True)) >= distance for p in earlier)
        ]


def _puzzle_like(seed: int, layers: int, options: int) -> tuple[SearchProblem, SearchLimits]:
    """Quality falling with cost (per-layer importance x damage, +-10% noise): many near-ties, little dominance."""
    rng = np.random.default_rng(seed)
    size = np.linspace(1.0, 0.0, options)
    out = []
    for i in range(layers):
        importance = rng.lognormal(0.0, 0.8)
        noise = rng.uniform(0.9, 1.1, (3, options))
        out.append(
            tuple(
                BlockOption(
                    name=f"l{i}o{j}",
                    quality=float(-importance * (1.0 - size[j]) ** 1.5 * noise[0, j]),
                    params=int(1000 * size[j] * noise[1, j]),
                    kv_bytes_per_token=int(64 * size[j]),
                    runtime_s={1: float(0.01 + size[j] * noise[2, j])},
                )
                for j in range(options)
            )
        )
    problem = SearchProblem(layers=tuple(out), fixed_params=500, fixed_runtime_s={1: 0.1})
    return problem, SearchLimits(
        seq_len=8,
        memory_bytes=2 * 500 + 0.6 * layers * (2 * 1000 + 8 * 64),
        latency_s=0.1 + 0.55 * layers,
        throughput_tokens_per_s=8 / (0.1 + 0.6 * layers),
    )


@pytest.mark.parametrize("seed", range(3))
def test_enumeration_agrees_with_highs(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On instances too large for brute force, the enumeration and HiGHS (its fallback) find the same optima."""
    problem, limits = _puzzle_like(seed, layers=40, options=12)
    ours = search(problem, limits, num_solutions=3, min_layer_difference=3)
    monkeypatch.setattr(mip, "MAX_STATES", 0)  # every enumeration hands over to HiGHS
    highs = search(problem, limits, num_solutions=3, min_layer_difference=3)
    assert [s.proved_by for s in ours.solutions] == ["enumeration"] * 3
    assert [s.proved_by for s in highs.solutions] == ["highs"] * 3
    for a, b in zip(ours.solutions, highs.solutions, strict=True):
        assert a.proven_optimal and b.proven_optimal
        assert a.quality == pytest.approx(b.quality, abs=1e-7)


def test_highs_fallback_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mip, "MAX_STATES", 0)
    for seed in range(6):
        problem = _random_problem(seed)
        limits = _limits(problem, seed, batch=(1, 4)[seed % 2])
        expected = brute_force(problem, limits)
        result = search(problem, limits, prune_dominated=False)
        if expected is None:
            assert result.infeasibility is not None
            continue
        (best,) = result.solutions
        assert best.proved_by == "highs" and best.proven_optimal
        assert best.quality == pytest.approx(expected[0], abs=1e-9)


def test_time_limit_without_a_proof_raises() -> None:
    problem, limits = _puzzle_like(0, layers=40, options=12)
    with pytest.raises(MIPError, match="did not prove optimality"):
        search(problem, limits, time_limit_s=1e-9)


def test_relative_gap_is_honoured_and_reported() -> None:
    problem, limits = _puzzle_like(1, layers=40, options=12)
    (exact,) = search(problem, limits).solutions
    (loose,) = search(problem, limits, mip_rel_gap=0.05).solutions
    assert exact.mip_gap == 0.0 and loose.proven_optimal
    assert 0.0 <= loose.mip_gap <= 0.05
    # quality is minus the cost: the loose child is within the reported gap of the optimum
    assert loose.quality <= exact.quality + 1e-12
    assert exact.quality - loose.quality <= loose.mip_gap * abs(loose.quality) + 1e-12
