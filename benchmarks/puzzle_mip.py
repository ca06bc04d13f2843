"""Puzzle MIP on Puzzle-sized instances: ours (LP bound + exact enumeration, HiGHS as the fallback) next to PuLP/CBC.

Instances: 162 layers (Ultra's depth) x 54 options (attention GQA 8/4/2/1 KV heads, linear, no-op x FFN 100/87/75/50/
25/20/10% width, linear, no-op) of a hidden-16384, 128-head parent with a 53,248-wide FFN. Parameters and KV bytes
come from ``nemotron_plugins.puzzle.cost``; runtimes are a roofline estimate of one decode step on an H100 (989 TFLOP/s
bf16, 3.35 TB/s) times seeded +-5% noise standing in for per-block measurement noise. Quality is shaped like Puzzle's
replace-1-block scores: ``-(imp_attn_i * dmg_attn_j**1.5 + imp_ffn_i * dmg_ffn_j**1.5) * noise`` with per-layer
importances ``imp ~ lognormal(0, 0.8)`` (some layers matter much more than others), damage growing as the block
shrinks (0 for the parent's block, 1 for a no-op; ``dmg_ffn`` = 1 - kept width fraction), and +-10% seeded noise per
(layer, option) standing in for scoring noise. So quality falls as cost falls, options of one layer are near-ties
of each other, and the noise makes few options dominated (about a third are pruned as dominated). Each instance has
memory (50-70% of the parent's weights + KV cache), latency (parent / 1.4-1.8) and throughput (parent x 1.3-1.6)
limits, and one "loop" solves for 3 diverse solutions (each differing from the earlier ones in >= 8 layers). Every
solve of ours is checked to be proven optimal (gap 0); CBC is run with relative gap 0 on the same tightened rows and
both objectives are compared. Both sides solve a tiny instance first (imports, CBC binary start) outside the timing.

Run: ``python benchmarks/puzzle_mip.py [--instances 6] [--no-pulp]``. PuLP is not a project dependency; install it
for this benchmark only (``pip install pulp``, which bundles the CBC binary). The machine's load average is printed
with the figures, and both wall and CPU seconds per loop (CBC's CPU: its child process): on a loaded shared machine
the wall times mostly measure the wait for a core, and the CPU times are the comparable figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.cost import (
    attention_flops_per_token,
    attention_kv_cache_bytes_per_token,
    attention_params,
    ffn_flops_per_token,
    ffn_params,
)
from nemotron_plugins.puzzle.search.mip import LIMIT_MARGIN, BlockOption, SearchLimits, SearchProblem, search

HIDDEN, HEADS, FFN_WIDTH, LAYERS, VOCAB = 16384, 128, 53248, 162, 128256
PEAK_FLOPS, BANDWIDTH = 989e12, 3.35e12
SEQ_LEN = 4096
NUM_SOLUTIONS, MIN_DIFF = 3, 8


def _options() -> list[tuple[AttentionConfig, FFNConfig]]:
    attns = [AttentionConfig.gqa(k) for k in (8, 4, 2, 1)] + [AttentionConfig.linear(), AttentionConfig.no_op()]
    widths = [int(FFN_WIDTH * f) // 256 * 256 for f in (1.0, 0.87, 0.75, 0.5, 0.25, 0.2, 0.1)]
    ffns = [FFNConfig.swiglu(w) for w in widths] + [FFNConfig.linear(), FFNConfig.no_op()]
    return [(a, f) for a in attns for f in ffns]


def puzzle_instance(seed: int, batch_size: int) -> tuple[SearchProblem, SearchLimits]:
    """One 162 x 54 instance with memory + latency + throughput limits at ``batch_size``."""
    rng = np.random.default_rng(seed)
    cfg = make_config(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        vocab_size=VOCAB,
        blocks=[BlockConfig(attention=AttentionConfig.gqa(8), ffn=FFNConfig.swiglu(FFN_WIDTH))],
    )
    opts = _options()
    base = []
    for attn, ffn in opts:
        params = attention_params(attn, cfg) + ffn_params(ffn, HIDDEN)
        kv = attention_kv_cache_bytes_per_token(attn, cfg)
        flops = attention_flops_per_token(attn, cfg, seq_len=SEQ_LEN) + ffn_flops_per_token(ffn, HIDDEN)
        frac_attn = {"gqa": 1.0 - 0.08 * (8 - (attn.num_key_value_heads or 8)) / 7, "linear": 0.3, "no_op": 0.0}
        frac_ffn = (
            0.25 if ffn.kind == "linear" else (0.0 if ffn.kind == "no_op" else ffn.intermediate_size / FFN_WIDTH)
        )
        base.append((attn, ffn, params, kv, flops, 1.0 - frac_attn[attn.kind], 1.0 - frac_ffn))
    importance_attn = rng.lognormal(0.0, 0.8, LAYERS)
    importance_ffn = rng.lognormal(0.0, 0.8, LAYERS)
    layers = []
    for i in range(LAYERS):
        row = []
        noise_q = rng.uniform(0.9, 1.1, len(base))
        noise_t = rng.uniform(0.95, 1.05, len(base))  # per-block measurements, each with its own noise
        for j, (attn, ffn, params, kv, flops, dmg_a, dmg_f) in enumerate(base):
            runtime = max(batch_size * flops / PEAK_FLOPS, (2 * params + batch_size * SEQ_LEN * kv) / BANDWIDTH)
            quality = -(importance_attn[i] * dmg_a**1.5 + importance_ffn[i] * dmg_f**1.5) * noise_q[j]
            name = f"attn={attn.kind}{attn.num_key_value_heads or ''} ffn={ffn.kind}{ffn.intermediate_size or ''}"
            row.append(
                BlockOption(
                    name=name,
                    quality=float(quality),
                    params=params,
                    kv_bytes_per_token=kv,
                    runtime_s={batch_size: float(runtime * noise_t[j])},
                )
            )
        layers.append(tuple(row))
    fixed_params = 2 * VOCAB * HIDDEN + HIDDEN
    fixed_rt = max(batch_size * 2 * VOCAB * HIDDEN / PEAK_FLOPS, 2 * VOCAB * HIDDEN * 2 / BANDWIDTH)
    problem = SearchProblem(layers=tuple(layers), fixed_params=fixed_params, fixed_runtime_s={batch_size: fixed_rt})
    parent = [opts.index((AttentionConfig.gqa(8), FFNConfig.swiglu(FFN_WIDTH)))] * LAYERS
    parent_params = fixed_params + sum(layers[i][c].params for i, c in enumerate(parent))
    parent_kv = sum(layers[i][c].kv_bytes_per_token for i, c in enumerate(parent))
    parent_rt = fixed_rt + sum(layers[i][c].runtime_s[batch_size] for i, c in enumerate(parent))
    limits = SearchLimits(
        seq_len=SEQ_LEN,
        batch_size=batch_size,
        memory_bytes=float(rng.uniform(0.5, 0.7) * (2 * parent_params + batch_size * SEQ_LEN * parent_kv)),
        latency_s=float(parent_rt / rng.uniform(1.4, 1.8)),
        throughput_tokens_per_s=float(batch_size * SEQ_LEN / parent_rt * rng.uniform(1.3, 1.6)),
    )
    return problem, limits


def _cpu_s() -> float:
    """CPU seconds of this process plus its finished children (CBC runs as a child process)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def solve_pulp(problem: SearchProblem, limits: SearchLimits, *, gap: float = 0.0) -> tuple[list[float], float]:
    """The same 3-solution loop with PuLP + CBC (relative gap ``gap``). Returns the objectives and the wall time."""
    import pulp

    b = limits.batch_size
    fixed_rt = problem.fixed_runtime_s.get(b, 0.0)
    start = time.perf_counter()
    m = pulp.LpProblem("puzzle", pulp.LpMaximize)
    x = {
        (i, j): pulp.LpVariable(f"x_{i}_{j}", cat="Binary")
        for i, opts in enumerate(problem.layers)
        for j in range(len(opts))
    }
    m += pulp.lpSum(o.quality * x[i, j] for i, opts in enumerate(problem.layers) for j, o in enumerate(opts))
    for i, opts in enumerate(problem.layers):
        m += pulp.lpSum(x[i, j] for j in range(len(opts))) == 1
    mem_scale = limits.memory_bytes - limits.weight_bytes * problem.fixed_params
    m += (
        pulp.lpSum(
            (limits.weight_bytes * o.params + b * limits.seq_len * o.kv_bytes_per_token) / mem_scale * x[i, j]
            for i, opts in enumerate(problem.layers)
            for j, o in enumerate(opts)
        )
        <= 1 - LIMIT_MARGIN  # the same tightened rows as ours
    )
    lat_scale = limits.latency_s - fixed_rt
    thr_scale = b * limits.seq_len / limits.throughput_tokens_per_s - fixed_rt
    for scale in (lat_scale, thr_scale):
        m += (
            pulp.lpSum(
                o.runtime_s[b] / scale * x[i, j] for i, opts in enumerate(problem.layers) for j, o in enumerate(opts)
            )
            <= 1 - LIMIT_MARGIN  # the same tightened rows as ours
        )
    objectives: list[float] = []
    for _ in range(NUM_SOLUTIONS):
        status = m.solve(pulp.PULP_CBC_CMD(msg=False, gapRel=gap, threads=1))
        if pulp.LpStatus[status] != "Optimal":
            break
        objectives.append(pulp.value(m.objective))
        chosen = [k for k, v in x.items() if v.value() > 0.5]
        m += pulp.lpSum(x[k] for k in chosen) <= len(problem.layers) - MIN_DIFF
    return objectives, time.perf_counter() - start


def main() -> None:
    """Run the instances and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=6, help="instances (seeds x batch sizes 1, 8, 64)")
    parser.add_argument("--no-pulp", action="store_true", help="skip the PuLP/CBC side")
    parser.add_argument("--gap", type=float, default=0.0, help="relative MIP gap for both solvers (0: proven optimal)")
    args = parser.parse_args()
    try:
        import pulp  # noqa: F401

        have_pulp = not args.no_pulp
    except ImportError:
        have_pulp = False
        print("PuLP is not installed: CBC column skipped (pip install pulp to run it)")
    # warm-up on 4 layers of an instance, all limits loose: imports, first calls, the CBC binary
    warm_problem, _ = puzzle_instance(seed=10_000, batch_size=1)
    small = SearchProblem(layers=warm_problem.layers[:4], fixed_params=0, fixed_runtime_s={1: 0.0})
    loose = SearchLimits(seq_len=SEQ_LEN, memory_bytes=1e15, latency_s=1e3, throughput_tokens_per_s=1e-3)
    search(small, loose, num_solutions=NUM_SOLUTIONS, min_layer_difference=1)
    if have_pulp:
        solve_pulp(small, loose)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")
    ours_times, cbc_times, ours_cpu, cbc_cpu = [], [], [], []
    print(
        f"{'instance':<18} {'ours wall s':>11} {'ours cpu s':>10} {'proved by':>11} {'CBC wall s':>10} "
        f"{'CBC cpu s':>9} {'objectives (ours)':>28} {'max |obj diff|':>14}"
    )
    for k in range(args.instances):
        batch = (1, 8, 64)[k % 3]
        problem, limits = puzzle_instance(seed=k, batch_size=batch)
        start, cpu = time.perf_counter(), _cpu_s()
        result = search(
            problem, limits, num_solutions=NUM_SOLUTIONS, min_layer_difference=MIN_DIFF, mip_rel_gap=args.gap
        )
        elapsed, cpu = time.perf_counter() - start, _cpu_s() - cpu
        if result.infeasibility is not None:
            print(f"seed {k} batch {batch}: infeasible\n{result.infeasibility.message()}")
            continue
        assert all(s.proven_optimal for s in result.solutions), "a solve did not reach the requested gap"
        ours_times.append(elapsed)
        ours_cpu.append(cpu)
        proved = "+".join(sorted({s.proved_by for s in result.solutions}))
        objs = [s.quality for s in result.solutions]
        cbc_col, cbc_cpu_col, agree = "-", "-", "-"
        if have_pulp:
            before = _cpu_s()
            cbc_objs, cbc_elapsed = solve_pulp(problem, limits, gap=args.gap)
            cbc_times.append(cbc_elapsed)
            cbc_cpu.append(_cpu_s() - before)
            cbc_col, cbc_cpu_col = f"{cbc_elapsed:.2f}", f"{cbc_cpu[-1]:.2f}"
            agree = (
                f"{max(abs(a - b) for a, b in zip(cbc_objs, objs, strict=False)):.1e}"
                if len(cbc_objs) == len(objs)
                else f"{len(cbc_objs)} sols"
            )
        obj_text = ", ".join(f"{o:.3f}" for o in objs)
        print(
            f"seed {k} batch {batch:<4} {elapsed:>11.2f} {cpu:>10.2f} {proved:>11} {cbc_col:>10} {cbc_cpu_col:>9} "
            f"{obj_text:>28} {agree:>14}",
            flush=True,
        )
    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for label, ours, cbc in (("wall", ours_times, cbc_times), ("cpu", ours_cpu, cbc_cpu)):
        if not ours:
            continue
        line = (
            f"{label:>4}: ours median {statistics.median(ours):.2f} s, worst {max(ours):.2f} s per "
            f"{NUM_SOLUTIONS}-solution loop ({len(ours)} instances)"
        )
        if cbc:
            ratio = [c / o for c, o in zip(cbc, ours, strict=True)]
            line += (
                f"; PuLP/CBC median {statistics.median(cbc):.2f} s, worst {max(cbc):.2f} s; "
                f"speedup median {statistics.median(ratio):.1f}x, min {min(ratio):.1f}x"
            )
        print(line)


if __name__ == "__main__":
    main()
