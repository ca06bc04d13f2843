"""``puzzle distill`` at several pipeline layouts on one run directory, against the single-process run.

Runs ``nemotron-plugins puzzle distill RUN`` (each as its own command, as a user would) at PP1 with micro-batches of
``--micro-batch-size`` rows (the reference), at PP1 with micro-batches twice as large (the same loss, only the
floating-point summation order changes: the noise floor), and at each ``--pp`` size; prints per layout the largest
relative and absolute differences of the per-step ``loss`` / ``kl`` / ``cosine`` / gradient norm to the reference,
the largest weight difference of the distilled child, and the wall and CPU seconds of the command (its processes
included).

Usage (the run directory of the CI-scale Puzzle benchmark)::

    python benchmarks/puzzle_search.py --out OUT --seeds 0 --scale ci
    python benchmarks/puzzle_distill_layouts.py OUT/seed0/run OUT/seed0/tokens/train.pt --pp 2 4

The run's ``distill.json`` and ``child_distilled/`` are left as the last layout wrote them; each layout's checkpoint
is written to ``RUN/../distill_layouts/``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEYS = ("loss", "kl", "cosine", "grad_norm")


def _distill(run: Path, tokens: str, out: Path, args: argparse.Namespace, pp: int, mbs: int) -> dict[str, Any]:
    """One ``puzzle distill`` command; its ``distill.json`` with the command's wall and CPU seconds."""
    command = [sys.executable, "-m", "nemotron_plugins.cli.main", "puzzle", "distill", str(run), "--tokens", tokens]
    command += ["--steps", str(args.steps), "--global-batch-size", str(args.global_batch_size)]
    command += ["--micro-batch-size", str(mbs), "--lr", str(args.lr), "--min-lr", str(args.lr / 10)]
    command += ["--warmup-steps", str(args.warmup_steps), "--seed", "0", "--force"]
    command += ["--pipeline-parallel", str(pp), "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = json.loads((run / "distill.json").read_text())
    shutil.copy(run / "distill.json", out / "distill.json")
    record["wall_s"] = wall
    record["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return record


def main() -> None:
    from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a Puzzle run directory after `puzzle realize`")
    parser.add_argument("tokens", help="training token ids")
    parser.add_argument("--pp", type=int, nargs="+", default=[2], help="pipeline sizes to compare")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=2, help="rows per micro-batch of the reference")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=2)
    args = parser.parse_args()
    mbs = args.micro_batch_size
    root = args.run.parent / "distill_layouts"
    layouts = [(1, mbs), (1, 2 * mbs), *((pp, mbs) for pp in args.pp)]
    records = {}
    for pp, rows in layouts:
        records[(pp, rows)] = _distill(args.run, args.tokens, root / f"pp{pp}_mbs{rows}", args, pp, rows)
    ref = records[(1, mbs)]
    ref_weights = read_hf_state_dict(root / f"pp1_mbs{mbs}")
    print(f"{'layout':12} {'micro':>5}  {'loss first -> last':20}", end="")
    print("".join(f"{'rel d ' + k:>16}" for k in KEYS) + f"{'max |dW|':>10}{'wall s':>8}{'CPU s':>7}")
    for (pp, rows), record in records.items():
        pairs = list(zip(ref["losses"], record["losses"], strict=True))
        rel = [max(abs(a[k] - b[k]) / abs(a[k]) for a, b in pairs) for k in KEYS]
        weights = read_hf_state_dict(root / f"pp{pp}_mbs{rows}")
        dw = max((weights[n] - ref_weights[n]).abs().max().item() for n in ref_weights)
        losses = record["losses"]
        print(f"{record['layout']:12} {rows:5d}  {losses[0]['loss']:.6f} -> {losses[-1]['loss']:.6f}  ", end="")
        print("".join(f"{x:16.2e}" for x in rel) + f"{dw:10.2e}{record['wall_s']:8.1f}{record['cpu_s']:7.1f}")
        print(f"{'':20}max abs d: " + ", ".join(f"{k} {max(abs(a[k] - b[k]) for a, b in pairs):.2e}" for k in KEYS))
    ranges = {k: (min(x[k] for x in ref["losses"]), max(x[k] for x in ref["losses"])) for k in KEYS}
    print("reference ranges over the steps: " + ", ".join(f"{k} {lo:.2e}..{hi:.2e}" for k, (lo, hi) in ranges.items()))


if __name__ == "__main__":
    main()
