"""Stage 6 with pipeline parallelism on gloo: the same per-step losses and the same distilled child as one process.

The 3-layer parent and child split unevenly over two stages (layers 0-1 and 2), so the first stage's cosine terms
reach the loss only through the auxiliary-loss attachment on its output activation: were they dropped, its layers'
gradients, and so the distilled weights, would differ from the single-process run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from nemotron_plugins.puzzle.search.distill import DistillResult, DistillSettings, run_distill
from tests.unit.puzzle.search.test_search_distill import _parent_and_child

BASE = DistillSettings(steps=3, global_batch_size=8, micro_batch_size=2, lr=3e-3, lr_schedule="constant", seed=3)
"""Four micro-batches per step: the 1F1B schedule interleaves forwards and backwards of different micro-batches."""


def _train_tokens() -> torch.Tensor:
    return torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(2))


def _assert_same_run(one: list[dict[str, float]], two: list[dict[str, float]], one_dir: Path, two_dir: Path) -> None:
    assert len(one) == len(two) == BASE.steps
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "kl", "cosine", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), (key, a, b)
    assert one[-1]["loss"] < one[0]["loss"]
    w1, w2 = read_hf_state_dict(one_dir), read_hf_state_dict(two_dir)
    start = read_hf_state_dict(one_dir.parent / "child")
    assert set(w1) == set(w2) == set(start)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
    # the comparison is of trained weights, not of the starting ones
    assert sum(not torch.equal(w1[name], start[name]) for name in w1) > len(w1) // 2


def _one_process(parent: Path, child: Path, out: Path) -> DistillResult:
    result = run_distill(parent, child, _train_tokens(), out, BASE)
    assert result.layout == "TP1 DP1"
    return result


def test_cli_distill_pp2_with_tied_embeddings_matches_one_process(tmp_path: Path, capsys) -> None:
    """``puzzle distill --pipeline-parallel 2`` (two gloo processes; the last stage holds a synchronised copy of the
    tied embedding) writes the losses and the child of the single-process run; PP 4 on 3 layers is refused."""
    from nemotron_plugins.cli.main import main

    torch.set_num_threads(1)
    parent, child = _parent_and_child(tmp_path, tied=True)
    one = _one_process(parent, child, tmp_path / "pp1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"parent": str(parent)}))
    torch.save(_train_tokens(), tmp_path / "train.pt")
    args = ["puzzle", "distill", str(run), "--tokens", str(tmp_path / "train.pt"), "--child", str(child)]
    args += ["--steps", "3", "--global-batch-size", "8", "--micro-batch-size", "2", "--lr", "3e-3"]
    args += ["--lr-schedule", "constant", "--seed", "3"]
    assert main([*args, "--pipeline-parallel", "2"]) == 0
    assert "distill (TP1 PP2 DP1)" in capsys.readouterr().out
    record = json.loads((run / "distill.json").read_text())
    assert record["layout"] == "TP1 PP2 DP1" and record["settings"]["pipeline_model_parallel_size"] == 2
    _assert_same_run(one.losses, record["losses"], tmp_path / "pp1", run / "child_distilled")

    with pytest.raises(SystemExit):
        main([*args, "--force", "--pipeline-parallel", "4"])
    assert "pipeline_model_parallel_size 4 is larger than the model's 3 layers" in capsys.readouterr().err


@pytest.mark.slow
def test_distill_tp2_pp2_sequence_parallel_matches_one_process(tmp_path: Path) -> None:
    """Four gloo processes (TP2 x PP2, sequence parallel): vocab-parallel KL on the last stage, hidden states
    gathered over the sequence on every stage."""
    torch.set_num_threads(1)
    parent, child = _parent_and_child(tmp_path)
    one = _one_process(parent, child, tmp_path / "pp1")
    settings = dataclasses.replace(
        BASE, tensor_model_parallel_size=2, pipeline_model_parallel_size=2, sequence_parallel=True
    )
    four = run_distill(parent, child, _train_tokens(), tmp_path / "tp2pp2", settings, timeout_s=600)
    assert four.layout == "TP2 PP2 DP1"
    _assert_same_run(one.losses, four.losses, tmp_path / "pp1", tmp_path / "tp2pp2")
