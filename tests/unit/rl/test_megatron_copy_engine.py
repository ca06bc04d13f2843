"""The megatron copy engine in one process: its copy equals the policy after a build and an update, decodes what
the policy decodes, and bad arguments / streams are refused by name."""

from __future__ import annotations

import pytest
import torch

from tests.unit.rl.conftest import tiny_puzzle_policy

VOCAB = 106


@pytest.fixture
def policy():
    with tiny_puzzle_policy(VOCAB, num_layers=4, seq_length=48) as built:
        yield built


def _engine(model, cfg):
    from nemotron_plugins.rl.engines.megatron_engine import MegatronCopyEngine, MegatronEngineConfig

    config = MegatronEngineConfig(eos_token_ids=(1,), vocab_size=VOCAB, max_batch_size=8)
    return MegatronCopyEngine(model, puzzle_config=cfg, tensor_parallel_size=1, bucket_bytes=1 << 14, config=config)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal parameters, the vocabulary-padding rows aside (the copy's are zero; no token id reaches them)."""
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    if sa.keys() != sb.keys():
        return False
    vocab = ("embedding.word_embeddings.weight", "output_layer.weight")
    return all(torch.equal(sa[k][:VOCAB], sb[k][:VOCAB]) if k in vocab else torch.equal(sa[k], sb[k]) for k in sa)


def test_copy_follows_the_policy_and_decodes_the_same(policy) -> None:
    from nemotron_plugins.rl.engines.megatron_engine import MegatronEngineConfig, MegatronRolloutEngine

    model, cfg = policy
    engine = _engine(model, cfg)
    assert engine.model is not model and _same(engine.model, model)
    assert not any(p.requires_grad for p in engine.model.parameters())
    assert (engine.layout.dp_size, engine.layout.dp_rank) == (1, 0)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    colocated = MegatronRolloutEngine(model, config=MegatronEngineConfig(eos_token_ids=(1,), vocab_size=VOCAB))
    for temperature in (0.0, 1.0):
        want = colocated.rollout(prompts, n=2, temperature=temperature, max_new_tokens=6, seed=9)
        got = engine.rollout(prompts, n=2, temperature=temperature, max_new_tokens=6, seed=9)
        for g, w in zip(got, want, strict=True):
            assert [r.completion_ids for r in g.rollouts] == [r.completion_ids for r in w.rollouts]
            # the copy's linear-replacement layers are other modules (its own TP groups): same values up to the
            # summation order of differently shaped GEMMs
            for r, want_r in zip(g.rollouts, w.rollouts, strict=True):
                assert r.logprobs == pytest.approx(want_r.logprobs, abs=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert not _same(engine.model, model)
    engine.update_weights(model=model)
    assert _same(engine.model, model)
    with pytest.raises(TypeError, match="model= .* or state_dict="):
        engine.update_weights()


def test_bad_streams_and_layouts_are_refused(policy) -> None:
    from nemotron_plugins.puzzle.hf_checkpoint import HFCheckpointError, load_hf_tensors
    from nemotron_plugins.puzzle.model import PuzzleModelError, build_puzzle_model, single_stage_process_groups
    from nemotron_plugins.rl.refit import stream_hf_weights
    from nemotron_plugins.runtime.config import ParallelConfig

    model, cfg = policy
    engine = _engine(model, cfg)
    tensors = [t for b in stream_hf_weights(model, config=cfg, export_widths=False) for t in b]
    with pytest.raises(HFCheckpointError, match="ended before these model tensors were written"):
        load_hf_tensors(engine.model, [tensors[:-1]], cfg)
    with pytest.raises(HFCheckpointError, match="model.layers.9.mlp.up_proj.weight"):
        load_hf_tensors(engine.model, [[*tensors, ("model.layers.9.mlp.up_proj.weight", tensors[0][1])]], cfg)
    padded = [t for b in stream_hf_weights(model, config=cfg) for t in b]  # the export's padded FFN widths
    if [t.shape for _, t in padded] != [t.shape for _, t in tensors]:
        with pytest.raises(HFCheckpointError, match="export_widths=False"):
            load_hf_tensors(engine.model, [padded], cfg)
    groups, _, _ = single_stage_process_groups(1)
    with pytest.raises(PuzzleModelError, match="pipeline_model_parallel_size"):
        build_puzzle_model(cfg, parallel=ParallelConfig(pipeline_model_parallel_size=2), pg_collection=groups)
    with pytest.raises(PuzzleModelError, match="tensor_model_parallel_size=2 but pg_collection.tp has 1"):
        build_puzzle_model(cfg, parallel=ParallelConfig(tensor_model_parallel_size=2), pg_collection=groups)
    with pytest.raises(PuzzleModelError, match="layer_spec='puzzle_te'"):
        build_puzzle_model(cfg, layer_spec="puzzle_te", pg_collection=groups)
