"""`nemotron-plugins puzzle library -> bld -> score -> search -> realize -> distill -> fuse` on a tiny parent, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemotron_plugins.cli.main import main
from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, load_hf_config, make_config
from nemotron_plugins.puzzle.cost import estimate_cost
from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from nemotron_plugins.puzzle.search.hf_forward import forward
from nemotron_plugins.puzzle.search.realize import child_from_names
from nemotron_plugins.puzzle.search.rundir import load_library
from tests.reference.tiny_checkpoints import random_hf_weights, write_hf_checkpoint


def test_search_pipeline_cli(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    blocks = [BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)) for _ in range(4)]
    cfg = make_config(hidden_size=32, num_attention_heads=4, vocab_size=64, blocks=blocks, rms_norm_eps=1e-5)
    parent = write_hf_checkpoint(tmp_path / "parent", cfg, random_hf_weights(cfg, seed=0))
    gen = torch.Generator().manual_seed(0)
    torch.save(torch.randint(0, 64, (4, 16), generator=gen), tmp_path / "calib.pt")
    torch.save(torch.randint(0, 64, (4, 16), generator=gen), tmp_path / "held.pt")
    run = tmp_path / "run"
    calib, held = str(tmp_path / "calib.pt"), str(tmp_path / "held.pt")

    assert main(["puzzle", "library", str(parent), str(run), "--calibration", calib]) == 0
    assert main(["puzzle", "library", str(parent), str(run), "--calibration", calib]) == 0  # resumes
    assert "reusing" in capsys.readouterr().out
    assert main(["puzzle", "bld", str(run), "--tokens", calib, "--batch-size", "2"]) == 0
    assert json.loads((run / "bld.json").read_text())["normalized_mse_first_last"]
    assert main(["puzzle", "score", str(run), "--held-out", held, "--seq-len", "8"]) == 0
    assert "scoring library_bld" in capsys.readouterr().out
    assert main(["puzzle", "search", str(run), "--param-fraction", "0.6", "--num-solutions", "2"]) == 0
    result = json.loads((run / "search.json").read_text())
    assert len(result["solutions"]) == 2 and all(s["proven_optimal"] for s in result["solutions"])
    assert main(["puzzle", "realize", str(run)]) == 0
    report = json.loads((run / "child" / "report.json").read_text())
    assert report["child"]["total_params"] <= 0.6 * estimate_cost(cfg).total_params
    assert report["param_fraction"] <= 0.6
    # the written checkpoint (FFN widths zero-padded to multiples of 256 for DeciLM readers) computes the searched
    # child: the parent with the chosen library variants swapped in
    names = result["solutions"][0]["names"]
    searched_cfg, searched_w = child_from_names(
        cfg, read_hf_state_dict(parent), load_library(run / "library_bld"), names
    )
    ids = torch.load(held)
    got = forward(load_hf_config(run / "child"), read_hf_state_dict(run / "child"), ids)
    torch.testing.assert_close(got, forward(searched_cfg, searched_w, ids), rtol=1e-5, atol=1e-5)

    # stage 6: global distillation on the megatron stack, written as an HF checkpoint of the same architecture
    distill = ["puzzle", "distill", str(run), "--tokens", calib, "--steps", "3", "--global-batch-size", "4"]
    assert main([*distill, "--micro-batch-size", "2", "--lr", "1e-3"]) == 0
    record = json.loads((run / "distill.json").read_text())
    assert len(record["losses"]) == 3 and record["layout"] == "TP1 DP1"
    assert load_hf_config(run / "child_distilled").blocks == load_hf_config(run / "child").blocks
    assert main(distill) == 0 and "reusing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*distill, "--force", "--micro-batch-size", "3"])
    assert "global_batch_size 4 must split" in capsys.readouterr().err

    # an impossible budget is explained, naming the limit and the best achievable value
    assert main(["puzzle", "search", str(run), "--param-fraction", "0.01", "--force"]) == 1
    out = capsys.readouterr().out
    assert "BINDING memory" in out and "best alone" in out

    assert (
        main(
            [
                "puzzle",
                "fuse",
                str(run / "child_distilled"),
                str(tmp_path / "fused"),
                "--calibration",
                calib,
                "--threshold",
                "2.0",
                "--plan-only",
            ]
        )
        == 0
    )
    plan = json.loads((tmp_path / "fused" / "fusion_plan.json").read_text())
    assert set(plan) == {"runs", "dependencies", "threshold", "groups"}
