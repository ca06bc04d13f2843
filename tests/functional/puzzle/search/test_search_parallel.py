"""Search stages 1-3 on Megatron (gloo, CPU): TP2 and DP2 give what one process gives, and what the plain-torch
reference forward gives."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.search.bld import blockwise_distill
from nemotron_plugins.puzzle.search.library import build_library, channel_contributions
from nemotron_plugins.puzzle.search.parallel import (
    SearchParallel,
    SearchParallelError,
    blockwise_distill_megatron,
    build_library_megatron,
    build_megatron_model,
    capture_megatron,
    channel_contributions_megatron,
    run_parallel,
    score_variants_megatron,
    stage_layers,
)
from nemotron_plugins.puzzle.search.score import score_variants
from tests.reference.tiny_checkpoints import random_hf_weights

VOCAB = 61  # odd: TP2 pads the vocabulary, and the padding must stay out of every softmax


def _parent(*, tied: bool = False) -> tuple[object, dict[str, torch.Tensor]]:
    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(32)),
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(48)),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.swiglu(32)),
    ]
    cfg = make_config(
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=VOCAB,
        blocks=blocks,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
    )
    weights = random_hf_weights(cfg, seed=0)
    return cfg, {k: v * 3 if "proj" in k else v for k, v in weights.items()}  # far from the identity


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, 12), generator=torch.Generator().manual_seed(seed))


def _library(cfg, weights) -> list:
    # KV heads that split over TP2, FFN widths that do
    return build_library(cfg, weights, _tokens(4, 1), ffn_fractions=(1.0, 0.5), kv_heads=[2])


PP_CANDIDATES = {
    (0, "attention", "linear"),
    (0, "ffn", "swiglu16"),
    (1, "attention", "gqa2"),
    (1, "ffn", "no_op"),
    (2, "attention", "no_op"),
    (2, "ffn", "linear"),
}
"""Candidates of the pipeline tests: every kind, on both stages of PP2 (layers 0-1 and 2); fewer than the whole
library so that the 2- and 4-rank runs stay short on 2 cores."""


@pytest.mark.parametrize("metric", ["kl", "lm_loss"])
def test_score_tp2_and_dp2_match_one_process_and_the_reference(metric: str) -> None:
    torch.set_num_threads(1)
    cfg, weights = _parent()
    variants = _library(cfg, weights)
    held = _tokens(6, 2)
    runtimes = {(v.layer, v.part, v.name): {1: 0.5 + v.layer} for v in variants}
    kwargs = {"metric": metric, "runtimes": runtimes}
    ref = score_variants(cfg, weights, variants, held, **kwargs)
    got = {}
    for tp, dp in ((1, 1), (2, 1), (1, 2)):
        settings = SearchParallel(tensor_model_parallel_size=tp, data_parallel_size=dp, micro_batch_size=4)
        got[(tp, dp)] = run_parallel(
            score_variants_megatron, settings, (cfg, weights, variants, held, settings), kwargs, timeout_s=300
        )
    for layout, scores in got.items():
        assert len(scores) == len(ref)
        for a, b in zip(ref, scores, strict=True):
            assert (a.layer, a.part, a.name, a.params, a.kv_bytes_per_token, a.runtime_s) == (
                b.layer,
                b.part,
                b.name,
                b.params,
                b.kv_bytes_per_token,
                b.runtime_s,
            )
            assert abs(a.score - b.score) <= 1e-5 * max(1.0, abs(a.score)), (layout, a, b)
    assert max(s.score for s in ref) > 1e-3  # the scores are not all ~0: the comparison can fail


def _stage_contents(cfg, weights) -> list[tuple[list[int], bool, bool, str]]:
    """Per rank (in rank order): the global layers of its stage's model, whether it holds the embedding / the output
    layer, and why a capture of every layer is refused there."""
    model = build_megatron_model(cfg, weights, 12)
    keys = set(model.state_dict())
    try:
        capture_megatron(model, cfg, _tokens(2, 0), set(range(cfg.num_hidden_layers)))
        refused = ""
    except SearchParallelError as err:
        refused = str(err)
    mine = (
        stage_layers(model),
        "embedding.word_embeddings.weight" in keys,
        "output_layer.weight" in keys,
        refused,
    )
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, mine)
    return out


def test_pp2_stages_build_only_their_own_layers() -> None:
    torch.set_num_threads(1)
    cfg, weights = _parent(tied=True)
    settings = SearchParallel(pipeline_model_parallel_size=2)
    first, last = run_parallel(_stage_contents, settings, (cfg, weights), timeout_s=300)
    assert first[:3] == ([0, 1], True, False) and last[:3] == ([2], False, True)
    assert "layers [2] are not on this pipeline stage (it holds layers [0, 1])" in first[3]
    assert "layers [0, 1] are not on this pipeline stage (it holds layers [2])" in last[3]


@pytest.mark.parametrize(("tp", "metric", "tied"), [(1, "kl", True), (1, "lm_loss", False), (2, "kl", False)])
def test_score_pp2_matches_one_process_and_the_reference(tp: int, metric: str, tied: bool) -> None:
    """PP2 (3 layers: stages of 2 and 1) and TP2 x PP2 (4 ranks): the parent's and every candidate's layers split
    over the stages, hidden states sent by megatron's forward-only schedule, logits and KL on the last stage (whose
    output layer is its own copy of a tied embedding)."""
    torch.set_num_threads(1)
    cfg, weights = _parent(tied=tied)
    variants = [v for v in _library(cfg, weights) if (v.layer, v.part, v.name) in PP_CANDIDATES]
    assert len(variants) == len(PP_CANDIDATES)
    held = _tokens(6, 2)  # micro-batches of 4 and 2 rows: two schedules of different shapes
    runtimes = {(v.layer, v.part, v.name): {1: 0.5 + v.layer} for v in variants}
    kwargs = {"metric": metric, "runtimes": runtimes}
    ref = score_variants(cfg, weights, variants, held, **kwargs)
    settings = SearchParallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=2, micro_batch_size=4)
    got = run_parallel(
        score_variants_megatron, settings, (cfg, weights, variants, held, settings), kwargs, timeout_s=300
    )
    assert [(s.layer, s.part, s.name, s.params, s.runtime_s) for s in got] == [
        (s.layer, s.part, s.name, s.params, s.runtime_s) for s in ref
    ]
    for a, b in zip(ref, got, strict=True):
        assert abs(a.score - b.score) <= 1e-5 * max(1.0, abs(a.score)), (settings.layout, a, b)
    assert max(s.score for s in ref) > 1e-3


def test_layouts_that_cannot_run_are_refused_naming_the_field() -> None:
    with pytest.raises(SearchParallelError, match="pipeline_model_parallel_size must be >= 1"):
        SearchParallel(pipeline_model_parallel_size=0).validate()
    cfg, _ = _parent()
    with pytest.raises(
        SearchParallelError, match="pipeline_model_parallel_size 4 is larger than the model's 3 layers"
    ):
        SearchParallel(pipeline_model_parallel_size=4).check_cfg(cfg)
    SearchParallel(pipeline_model_parallel_size=3).check_cfg(cfg)
    with pytest.raises(SearchParallelError, match="does not divide layer 0's 2 KV heads"):
        SearchParallel(tensor_model_parallel_size=4).check_cfg(cfg)
    cfg, weights = _parent()
    library = build_library(cfg, weights, _tokens(2, 1), ffn_fractions=(1.0,), kv_heads=[2, 1])
    with pytest.raises(SearchParallelError, match="library variant layer 0 attention 'gqa1' .*1 KV heads"):
        SearchParallel(tensor_model_parallel_size=2).check_variants(cfg, library)
    SearchParallel(tensor_model_parallel_size=2).check_variants(cfg, _library(cfg, weights))


def test_library_tp2_dp2_and_pp2_equal_the_single_process_library() -> None:
    torch.set_num_threads(1)
    cfg, weights = _parent()
    calib = _tokens(6, 3)
    ref_contrib = channel_contributions(cfg, weights, calib)
    one = SearchParallel()
    got_contrib = run_parallel(channel_contributions_megatron, one, (cfg, weights, calib, one))
    assert set(got_contrib) == set(ref_contrib) == {0, 1, 2}
    for i, ref in ref_contrib.items():
        torch.testing.assert_close(got_contrib[i], ref, rtol=1e-5, atol=1e-7)
    kwargs = {"ffn_fractions": (1.0, 0.5, 0.25), "kv_heads": [2, 1]}
    ref = build_library(cfg, weights, calib, **kwargs)
    for tp, pp, dp in ((2, 1, 1), (1, 1, 2), (1, 2, 1)):
        # PP2: layers 0-1 on stage 0, layer 2 on stage 1, each stage's contributions gathered in layer order
        settings = SearchParallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, data_parallel_size=dp, micro_batch_size=4
        )
        got = run_parallel(build_library_megatron, settings, (cfg, weights, calib, settings), kwargs, timeout_s=300)
        assert [(v.layer, v.part, v.name) for v in got] == [(v.layer, v.part, v.name) for v in ref]
        for a, b in zip(ref, got, strict=True):
            assert (a.attention, a.ffn) == (b.attention, b.ffn)
            assert set(a.tensors) == set(b.tensors)
            for key, tensor in a.tensors.items():
                # pruned channels are slices of the parent's tensors: the same channels give equal tensors
                assert torch.equal(tensor, b.tensors[key]), (settings.layout, a.layer, a.name, key)
    pruned = [v for v in ref if v.name == "swiglu16"]
    assert pruned and not torch.equal(
        pruned[0].tensors["mlp.up_proj.weight"], weights["model.layers.0.mlp.up_proj.weight"][:16]
    )


@pytest.mark.parametrize(("tp", "pp", "dp"), [(1, 1, 2), (2, 1, 1), (1, 2, 1)])
def test_bld_dp2_tp2_and_pp2_train_the_variants_one_process_trains(tp: int, pp: int, dp: int) -> None:
    """At PP2 layer 0's variants train on stage 0 and layer 2's on stage 1, each from its own stage's capture."""
    torch.set_num_threads(1)
    cfg, weights = _parent()
    variants = [v for v in _library(cfg, weights) if v.layer in (0, 2)]  # every kind: gqa, linear, swiglu, no-op
    train = _tokens(10, 4)  # batches of 4, 4 and 2 rows: DP2 splits each, the last one 1 + 1
    kwargs = {"batch_size": 4, "epochs": 1, "lr": 3e-3, "seed": 5}
    ref, ref_losses = blockwise_distill(cfg, weights, variants, train, **kwargs)
    moved = [k for k, (a, b) in ref_losses.items() if b < a]
    assert moved, ref_losses  # training changes the losses: the comparison can fail
    settings = SearchParallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, data_parallel_size=dp, micro_batch_size=2
    )
    got, losses = run_parallel(
        blockwise_distill_megatron, settings, (cfg, weights, variants, train, settings), kwargs, timeout_s=300
    )
    assert list(losses) == list(ref_losses)  # the same keys in the same (library) order
    for key, (a0, a1) in ref_losses.items():
        b0, b1 = losses[key]
        assert abs(a0 - b0) <= 1e-5 * max(1.0, a0) and abs(a1 - b1) <= 1e-4 * max(1.0, a1), (key, a0, a1, b0, b1)
    for a, b in zip(ref, got, strict=True):
        assert a.name == b.name and set(a.tensors) == set(b.tensors)
        for key, tensor in a.tensors.items():
            torch.testing.assert_close(b.tensors[key], tensor, rtol=1e-4, atol=1e-5, msg=f"{a.layer} {a.name} {key}")
    # the parent's own sub-block (layer 0's 2 KV heads) is left as it is on every layout
    (same,) = [v for v in got if (v.layer, v.name) == (0, "gqa2")]
    assert torch.equal(same.tensors["self_attn.k_proj.weight"], weights["model.layers.0.self_attn.k_proj.weight"])


def test_cli_stages_at_two_ranks_write_what_one_rank_writes(tmp_path, capsys) -> None:
    import json
    import shutil

    from nemotron_plugins.cli.main import main
    from nemotron_plugins.puzzle.search.rundir import load_library
    from tests.reference.tiny_checkpoints import write_hf_checkpoint

    torch.set_num_threads(1)
    cfg, weights = _parent()
    parent = str(write_hf_checkpoint(tmp_path / "parent", cfg, weights))
    torch.save(_tokens(4, 6), tmp_path / "calib.pt")
    torch.save(_tokens(4, 7), tmp_path / "held.pt")
    calib, held = str(tmp_path / "calib.pt"), str(tmp_path / "held.pt")
    one, two = tmp_path / "one", tmp_path / "two"
    lib = ["--ffn-fractions", "1.0,0.5", "--kv-heads", "2"]
    assert main(["puzzle", "library", parent, str(one), "--calibration", calib, *lib]) == 0
    shutil.copytree(one, two)
    bld = ["--tokens", calib, "--batch-size", "2"]
    score = ["--held-out", held, "--seq-len", "8"]
    assert main(["puzzle", "bld", str(one), *bld]) == 0
    assert main(["puzzle", "score", str(one), *score]) == 0
    assert main(["puzzle", "bld", str(two), *bld, "--data-parallel", "2"]) == 0
    assert main(["puzzle", "score", str(two), *score, "--tensor-parallel", "2"]) == 0
    assert "scoring library_bld on Megatron (TP2 DP1)" in capsys.readouterr().out
    bld_one, bld_two = (json.loads((run / "bld.json").read_text()) for run in (one, two))
    assert (bld_one["layout"], bld_two["layout"]) == ("TP1 DP1", "TP1 DP2")
    for key, (a0, a1) in bld_one["normalized_mse_first_last"].items():
        b0, b1 = bld_two["normalized_mse_first_last"][key]
        assert abs(a0 - b0) <= 1e-5 * max(1.0, a0) and abs(a1 - b1) <= 1e-4 * max(1.0, a1), (key, a0, a1, b0, b1)
    runs = [json.loads((run / "scores.json").read_text()) for run in (one, two)]
    assert (runs[0]["layout"], runs[1]["layout"]) == ("TP1 DP1", "TP2 DP1")
    for a, b in zip(runs[0]["scores"], runs[1]["scores"], strict=True):
        assert (a["layer"], a["part"], a["name"]) == (b["layer"], b["part"], b["name"])
        assert abs(a["score"] - b["score"]) <= 1e-4 * max(1.0, a["score"]), (a, b)
    # --pipeline-parallel 2: the library of one process, tensor for tensor
    three = tmp_path / "three"
    assert (
        main(["puzzle", "library", parent, str(three), "--calibration", calib, *lib, "--pipeline-parallel", "2"]) == 0
    )
    assert "(TP1 PP2 DP1)" in capsys.readouterr().out
    lib_one, lib_three = load_library(one / "library"), load_library(three / "library")
    assert [(v.layer, v.part, v.name) for v in lib_one] == [(v.layer, v.part, v.name) for v in lib_three]
    for a, b in zip(lib_one, lib_three, strict=True):
        assert set(a.tensors) == set(b.tensors) and all(torch.equal(t, b.tensors[k]) for k, t in a.tensors.items())
    with pytest.raises(SystemExit):
        main(["puzzle", "library", parent, str(three), "--calibration", calib, "--force", "--pipeline-parallel", "4"])
    assert "pipeline_model_parallel_size 4 is larger than the model's 3 layers" in capsys.readouterr().err
