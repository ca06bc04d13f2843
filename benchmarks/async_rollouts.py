"""GRPO step time with and without ``generation.async_rollouts``, same recipe, same process, interleaved.

Run:  python benchmarks/async_rollouts.py [--root DIR] [--steps 8] [--skip 2] [--rounds 2] [--threads 1]

Both runs are the tiny GRPO recipe (``tiny_puzzle_grpo_cpu``) with the megatron copy engine
(``generation.megatron_layout=generation``) and the importance-sampling correction, no held-out evaluation and no
checkpoint until the last step; they differ only in ``generation.async_rollouts``. ``--root`` is where the run
directories go: when it holds the tiny SFT checkpoint (``tiny_puzzle_sft_cpu``) the runs start from it (as the
recipe does), else from a random initialisation (``--random-init``). The sync and async runs alternate ``--rounds``
times so that both see the same machine load; the table prints, per mode, the median over the steps after
``--skip`` of ``time/step_s`` (collection + update + refit of a step), ``time/rollout_s`` and ``time/reward_s`` (of
the step's rollouts: in the async run they ran in the background during the previous step) and ``time/train_s``
(update, wait for the background collection, refit), with the load average before and after (``os.getloadavg``):
the two modes are comparable only on a machine that is not shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(root: Path, name: str, steps: int, threads: int, extra: list[str]) -> list[dict[str, float]]:
    """One tiny GRPO run in ``root / name`` (deleted first); its per-step metrics."""
    from nemotron_plugins.launch.build import build_recipe
    from nemotron_plugins.rl.trainer import run_grpo

    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    config = build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            f"output_dir={out}",
            f"train_steps={steps}",
            "evaluation.num_samples=0",
            "evaluation.interval=0",
            "checkpoint.save_interval=0",
            "generation.megatron_layout=generation",
            "algorithm.importance_sampling_correction=true",
            f"torch_threads={threads}",
            *extra,
        ],
    )
    history = run_grpo(config).history
    shutil.rmtree(out, ignore_errors=True)
    return history


def main() -> None:
    """Parse the arguments, run the interleaved pairs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/async_rollouts_bench")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip", type=int, default=2, help="first steps left out of the medians (warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    extra = [] if (root / "tiny_puzzle_sft_cpu").is_dir() else ["init_from_recipe=null", "model.init=random"]
    load_before = os.getloadavg()
    rows: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    for i in range(args.rounds):
        for mode in ("sync", "async"):
            flag = f"generation.async_rollouts={'true' if mode == 'async' else 'false'}"
            rows[mode] += run(root, f"bench_{mode}_{i}", args.steps, args.threads, [*extra, flag])[args.skip :]
    load_after = os.getloadavg()

    keys = ("time/step_s", "time/rollout_s", "time/reward_s", "time/train_s")
    print(
        f"tiny GRPO, {args.steps} steps x {args.rounds} rounds per mode (first {args.skip} of each run skipped), "
        f"{'SFT checkpoint' if not extra else 'random init'}, torch threads {args.threads}"
    )
    print(f"{'mode':6s} " + " ".join(f"{k:>15s}" for k in keys) + f" {'lag':>5s}")
    for mode, hist in rows.items():
        medians = [statistics.median(h[k] for h in hist) for k in keys]
        lag = statistics.mean(h.get("async/weight_version_lag", 0.0) for h in hist)
        print(f"{mode:6s} " + " ".join(f"{m:15.3f}" for m in medians) + f" {lag:5.2f}")
    sync_step = statistics.median(h["time/step_s"] for h in rows["sync"])
    async_step = statistics.median(h["time/step_s"] for h in rows["async"])
    print(f"async / sync step time: {async_step / sync_step:.3f}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; cores {os.cpu_count()}")


if __name__ == "__main__":
    main()
