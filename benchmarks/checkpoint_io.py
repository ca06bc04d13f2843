"""Benchmark distributed-checkpoint I/O (nemotron_plugins.training.checkpointing): save and load time and peak
memory against model size, on CPU, one process.

Run: ``python benchmarks/checkpoint_io.py [--sizes 256:4,512:8,1024:8] [--dist-opt] [--repeats 2]``

For each dense Puzzle config ``hidden:layers`` (GQA 8 heads / 4 KV heads, SwiGLU 4 x hidden, vocabulary 1024) the
script builds the megatron-core model, megatron DDP and megatron's Adam (``--dist-opt``: the distributed optimizer),
takes one real step so the optimizer has moments, then times ``save_checkpoint`` (model + optimizer + scheduler +
RNG, torch_dist, atomic commit) and ``load_checkpoint`` into the same objects, best of ``--repeats``. Peak memory is
the process's resident set size sampled every 5 ms during the call, minus the RSS before it (what the save / load
itself needs on top of the model and optimizer); ``ckpt MB`` is the size on disk. Numbers depend on the machine's
load; the script prints the load average.

More tables plug in through :data:`TABLES` (a name -> function printing one table); the HF-checkpoint read
(bytes read per rank at TP2) belongs there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Sample RSS every 5 ms in a thread; yields a dict that gets ``peak_mb`` (above the starting RSS)."""
    out: dict[str, float] = {}
    start = _rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        out["peak_mb"] = (peak[0] - start) / 2**20


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def dist_checkpoint_table(args: argparse.Namespace) -> None:
    """Save / load time and peak memory of distributed checkpoints against model size."""
    from nemotron_plugins.puzzle.model import count_parameters
    from nemotron_plugins.runtime.distributed import destroy_distributed
    from nemotron_plugins.training.checkpointing import load_checkpoint, save_checkpoint
    from tests.functional.training.checkpoint_worker import build, train_step

    rows = []
    for size in args.sizes.split(","):
        hidden, layers = size.split(":")
        run = build({"arch": f"dense:{hidden}:{layers}", "dist_opt": args.dist_opt})
        try:
            state = {"step": 0, "sample": 0}
            train_step(run, state)
            params = count_parameters(run["model"][0])
            root = Path(tempfile.mkdtemp(prefix="ckpt_bench_"))
            saves, loads, save_mem, load_mem = [], [], [], []
            for i in range(args.repeats):
                with peak_rss() as mem:
                    t = time.perf_counter()
                    path = save_checkpoint(
                        root,
                        i + 1,
                        model=run["model"],
                        optimizer=run["optimizer"],
                        scheduler=run["scheduler"],
                        state=state,
                        keep_last=1,
                    )
                    saves.append(time.perf_counter() - t)
                save_mem.append(mem["peak_mb"])
                with peak_rss() as mem:
                    t = time.perf_counter()
                    load_checkpoint(root, model=run["model"], optimizer=run["optimizer"], scheduler=run["scheduler"])
                    loads.append(time.perf_counter() - t)
                load_mem.append(mem["peak_mb"])
            rows.append((size, params, _dir_mb(path), min(saves), max(save_mem), min(loads), max(load_mem)))
            shutil.rmtree(root, ignore_errors=True)
        finally:
            destroy_distributed()
    optimizer = "distributed optimizer" if args.dist_opt else "megatron Adam"
    print(f"\ndistributed checkpoints (torch_dist), 1 CPU process, {optimizer}, best of {args.repeats}")
    print(
        f"{'hidden:layers':>13} {'params':>11} {'ckpt MB':>8} {'save s':>7} {'save +MB':>9} {'load s':>7} "
        f"{'load +MB':>9}"
    )
    for size, params, mb, save_s, save_mb, load_s, load_mb in rows:
        print(f"{size:>13} {params:>11,} {mb:>8.1f} {save_s:>7.2f} {save_mb:>9.1f} {load_s:>7.2f} {load_mb:>9.1f}")


TABLES: dict[str, Callable[[argparse.Namespace], None]] = {"dist_checkpoint": dist_checkpoint_table}
"""Tables this script can print (``--only NAME``)."""


def main() -> None:
    """Parse arguments and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256:4,512:8,1024:8", help="comma-separated hidden:layers")
    parser.add_argument("--dist-opt", action="store_true", help="megatron's distributed optimizer (DP1 here)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=sorted(TABLES), default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"load average: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    for name, table in TABLES.items():
        if args.only in (None, name):
            table(args)


if __name__ == "__main__":
    main()
