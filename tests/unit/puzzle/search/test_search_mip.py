"""The Puzzle MIP (HiGHS through scipy) against brute force, diversity, and infeasibility explanations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nemotron_plugins.puzzle.search.mip import (
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
