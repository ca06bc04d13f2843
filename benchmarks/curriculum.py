"""Time to plan 1,000,000 prompts into global batches of 576: progressive Gaussian curriculum vs random batches.

Run:  python benchmarks/curriculum.py [--prompts 1000000] [--batch-size 576] [--repeats 3]

Prints one table row per sampler: the best wall time to plan one epoch (all global batches) and to iterate it as a
batch sampler (one rank of 8 data-parallel ranks, lists of ints as a DataLoader receives them). The data are pass
rates from k = 8 samples of a Beta-distributed difficulty, filtered at < 0.75 as in LN-Ultra.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nemotron_plugins.curriculum.sampler import ProgressiveGaussianBatchSampler, RandomBatchSampler


def _pass_rates(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = rng.binomial(8, rng.beta(1.2, 1.5, int(n * 1.5))) / 8
    rates = rates[rates < 0.75]
    return rates[:n]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates = _pass_rates(args.prompts)
    n, g = len(rates), args.batch_size

    def torch_baseline() -> None:
        import torch

        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), g, drop_last=True
        )
        for _ in sampler:
            pass

    cases = {
        "progressive_gaussian": lambda **kw: ProgressiveGaussianBatchSampler(rates, global_batch_size=g, **kw),
        "progressive_gaussian (sinkhorn)": lambda **kw: ProgressiveGaussianBatchSampler(
            rates, global_batch_size=g, balance="sinkhorn", **kw
        ),
        "random": lambda **kw: RandomBatchSampler(n, global_batch_size=g, **kw),
    }
    print(f"{n:,} prompts, global batch {g}, {n // g:,} batches per epoch, best of {args.repeats}")
    header = f"{'sampler':<34}{'plan epoch (s)':>16}{'iterate rank 0/8 (s)':>22}{'first-batch mean':>18}{'last-batch mean':>17}"
    print(header)
    print("-" * len(header))
    for name, make in cases.items():
        plan_s = _best(lambda make=make: make().plan_epoch(0), args.repeats)
        iter_s = _best(lambda make=make: list(make(dp_rank=0, dp_world_size=8)), args.repeats)
        plan = make().plan_epoch(0)
        means = np.add.reduceat(rates[plan.indices], plan.offsets[:-1]) / plan.batch_sizes()
        print(f"{name:<34}{plan_s:>16.3f}{iter_s:>22.3f}{means[0]:>18.3f}{means[-1]:>17.3f}")
    torch_s = _best(torch_baseline, args.repeats)
    print(f"{'torch BatchSampler(RandomSampler)':<34}{'-':>16}{torch_s:>22.3f}{'-':>18}{'-':>17}")


if __name__ == "__main__":
    main()
