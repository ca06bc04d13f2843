"""The SFT trainer on the shared stack at other layouts: TP2 with sequence parallelism, DP2, and activation
recompute (selective, full) give the TP1 losses to rounding. Each case runs in fresh processes."""

from __future__ import annotations

import pytest

from nemotron_plugins.runtime.distributed import run_local_processes
from tests.functional.training.sft_layout_worker import sft_losses

STEPS = ["train_steps=3", "torch_threads=1"]


def _run(nprocs: int, out, overrides: list[str]) -> list[dict[int, float]]:
    return run_local_processes(sft_losses, nprocs, (str(out), overrides), timeout_s=300)


def _close(a: dict[int, float], b: dict[int, float], tol: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])) for k in a)


@pytest.mark.slow
def test_tp2_sequence_parallel_and_dp2_match_tp1(tmp_path) -> None:
    from nemotron_plugins.puzzle.block_config import save_hf_config
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    # The recipe's tiny model has a 1-KV-head layer; this one (KV heads 4 and 2, every block kind) splits over TP2.
    config = tmp_path / "tp2.json"
    save_hf_config(tiny_puzzle_config(128, max_position_embeddings=128), config)
    steps = [*STEPS, f"model.config_path={config}"]
    (tp1,) = _run(1, tmp_path / "tp1", steps)
    two = [*steps, "cluster.devices_per_node=2"]
    for name, extra in {
        "tp2_sp": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
        "dp2": [],
    }.items():
        a, b = _run(2, tmp_path / name, [*two, *extra])
        assert a == b, name  # every rank reports the global loss
        assert _close(a, tp1, 1e-5), (name, a, tp1)


@pytest.mark.slow
def test_activation_recompute_leaves_losses_unchanged(tmp_path) -> None:
    (none,) = _run(1, tmp_path / "none", STEPS)
    for mode in ("selective", "full"):
        (losses,) = _run(1, tmp_path / mode, [*STEPS, f"recompute={mode}"])
        assert _close(losses, none, 1e-6), (mode, losses, none)
