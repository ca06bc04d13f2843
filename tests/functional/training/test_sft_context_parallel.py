"""The SFT trainer with context parallelism on gloo (SDPA attention, K/V all-gathered over CP, megatron's
load-balanced chunks, the loss summed over the CP group): CP2 gives the CP1 losses, unpacked and packed (several
documents per row, each padded to 2 x CP and split on its own), and a checkpoint saved at CP2 resumes at CP1 with
the uninterrupted CP1 run's next loss. Each case runs in fresh processes."""

from __future__ import annotations

import pytest

from nemotron_plugins.runtime.distributed import run_local_processes
from tests.functional.training.sft_layout_worker import sft_losses

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
# The workers run on CPU / gloo also on a GPU machine (tests/functional/training/conftest.py hides the GPU).

BASE = ["torch_threads=1"]
CP2 = ["cluster.devices_per_node=2", "parallel.context_parallel_size=2"]


def _run(nprocs: int, out, overrides: list[str]) -> list[dict[int, float]]:
    return run_local_processes(sft_losses, nprocs, (str(out), overrides), timeout_s=420)


def _close(a: dict[int, float], b: dict[int, float], tol: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])) for k in a)


@pytest.mark.slow
def test_cp2_equals_cp1_and_a_cp2_checkpoint_resumes_at_cp1(tmp_path) -> None:
    steps = [*BASE, "train_steps=3"]
    (cp1,) = _run(1, tmp_path / "cp1", steps)
    a, b = _run(2, tmp_path / "cp2", [*steps, *CP2, "stop_after_steps=2"])
    assert a == b  # every rank reports the global loss
    assert sorted(a) == [1, 2]
    assert _close(a, {k: cp1[k] for k in (1, 2)}, 1e-5), (a, cp1)
    # The CP2 run's distributed checkpoint (step 2) resumes in one process: step 3 is the uninterrupted CP1 step 3.
    (resumed,) = _run(1, tmp_path / "cp2", steps)
    assert sorted(resumed) == [3]
    assert _close(resumed, {3: cp1[3]}, 1e-5), (resumed, cp1)


@pytest.mark.slow
def test_cp2_packed_equals_cp1_packed(tmp_path) -> None:
    # 192-token rows hold two or more addition traces each: documents of odd lengths, padded per document under CP.
    steps = [*BASE, "train_steps=2", "data.pack_sequences=true", "data.max_seq_length=192", "model.seq_length=192"]
    (cp1,) = _run(1, tmp_path / "cp1", steps)
    a, b = _run(2, tmp_path / "cp2", [*steps, *CP2])
    assert a == b
    assert _close(a, cp1, 1e-5), (a, cp1)


@pytest.mark.slow
def test_tp2_sequence_parallel_with_cp2_equals_tp1_cp1(tmp_path) -> None:
    from nemotron_plugins.puzzle.block_config import save_hf_config
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    # KV heads 4 and 2 (every block kind) split over TP2; four processes: TP2 x CP2.
    config = tmp_path / "tp2.json"
    save_hf_config(tiny_puzzle_config(128, max_position_embeddings=128), config)
    steps = [*BASE, "train_steps=2", f"model.config_path={config}"]
    (ref,) = _run(1, tmp_path / "tp1", steps)
    layout = [
        "cluster.devices_per_node=4",
        "parallel.tensor_model_parallel_size=2",
        "parallel.sequence_parallel=true",
        "parallel.context_parallel_size=2",
    ]
    results = _run(4, tmp_path / "tp2cp2", [*steps, *layout])
    assert all(r == results[0] for r in results)
    assert _close(results[0], ref, 1e-5), (results[0], ref)


@pytest.mark.slow
def test_pp2_with_cp2_packed_equals_pp1_cp1(tmp_path) -> None:
    # Four processes, PP2 x CP2, packed rows: every micro-batch of a step is filled to the step's longest padded
    # length (the pipeline's P2P buffers need one shape), two micro-batches per step (1F1B).
    steps = [*BASE, "train_steps=2", "data.pack_sequences=true", "data.max_seq_length=192", "model.seq_length=192"]
    (ref,) = _run(1, tmp_path / "ref", steps)
    layout = ["cluster.devices_per_node=4", "parallel.pipeline_model_parallel_size=2", *CP2[1:]]
    results = _run(4, tmp_path / "pp2cp2", [*steps, *layout])
    assert all(r == results[0] for r in results)
    assert _close(results[0], ref, 1e-5), (results[0], ref)
