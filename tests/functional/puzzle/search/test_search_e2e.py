"""The Puzzle end-to-end command (``benchmarks/puzzle_search.py``) at its scaled-down CI size, on CPU.

Dense parent SFT-trained on Post-Training-format rows -> library -> BLD -> score -> search at 60% of the parameters
-> realize -> distill -> fuse, plus the uniformly pruned baseline of the same budget. Checks what each stage left in
the run directory and the comparison's figures; no timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.block_config import load_hf_config
from nemotron_plugins.puzzle.cost import estimate_cost

SCRIPT = Path(__file__).resolve().parents[4] / "benchmarks" / "puzzle_search.py"


@pytest.fixture(scope="module")
def bench():
    """The end-to-end script imported as a module."""
    spec = importlib.util.spec_from_file_location("puzzle_search_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_uniform_width_is_the_largest_that_fits(bench) -> None:
    parent = bench.parent_config(bench.SCALES["ci"], vocab_size=300)
    total = estimate_cost(parent).total_params
    width = bench.uniform_width(parent, 0.6 * total)
    assert 0 < width < parent.blocks[0].ffn.intermediate_size
    import dataclasses

    from nemotron_plugins.puzzle.block_config import BlockConfig, FFNConfig

    def params(w: int) -> int:
        blocks = tuple(BlockConfig(attention=b.attention, ffn=FFNConfig.swiglu(w)) for b in parent.blocks)
        return estimate_cost(dataclasses.replace(parent, blocks=blocks)).total_params

    assert params(width) <= 0.6 * total < params(width + 1)


def test_end_to_end_ci_scale(bench, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    (row,) = bench.main(["--out", str(tmp_path), "--seeds", "0", "--scale", "ci"])
    run = tmp_path / "seed0" / "run"
    for artefact in ("library/library.json", "library_bld/library.json", "scores.json", "search.json", "bld.json"):
        assert (run / artefact).is_file(), artefact
    assert (run / "child" / "report.json").is_file() and (run / "child_distilled" / "config.json").is_file()
    assert (run / "fused" / "fusion_plan.json").is_file()
    # the parent was trained (its SFT loss fell) and exported; both children fit 60% of its parameters
    parent = load_hf_config(tmp_path / "seed0" / "parent")
    assert estimate_cost(parent).total_params == row["parent_params"]
    for label in ("searched", "uniform"):
        child = row[label]
        assert child["params"] <= 0.6 * row["parent_params"]
        assert all(math.isfinite(child[k]) and child[k] > 0 for k in ("kl_before", "kl_after"))
        assert child["kl_after"] < child["kl_before"], (label, child)  # distillation moved the child to the parent
        assert len(child["layers"]) == parent.num_hidden_layers
    assert len(set(row["uniform"]["layers"])) == 1
    assert row["eval_tokens"] == 16 * 32
    distill = json.loads((run / "distill.json").read_text())
    assert len(distill["losses"]) == bench.SCALES["ci"].distill_steps
    out = capsys.readouterr().out
    assert "searched" in out and "uniform" in out and "16 seq x 32 tok = 512 tokens" in out
