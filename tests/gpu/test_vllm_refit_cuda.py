"""The ``vllm`` rollout engine for real (GPU + vLLM): a refitted policy generates what the Megatron engine generates.

For each architecture (an all-standard Llama-like model, exported as ``LlamaForCausalLM``, and the tiny heterogeneous
Puzzle fixture, exported as ``nemotron-nas`` with padded FFN widths):

1. build the Megatron policy (bf16, CUDA) and export it: vLLM starts from this checkpoint (the stale policy);
2. "update" the policy in place (a seeded perturbation of every weight), then ``engine.update_weights(model=...)``
   -- the trainer's call -- streams the new weights through :mod:`nemotron_plugins.rl.refit` into vLLM in buckets;
3. greedy completions from vLLM must equal the Megatron engine's on the updated policy (first token of every prompt,
   whole completions for most; bf16 kernels differ), and vLLM's sampled-token log-probs must be close to Megatron's;
   before the refit, vLLM (still on the stale checkpoint) must disagree somewhere -- the check can fail.

With ``fp8=True`` the refit goes through vLLM's layerwise reload (re-quantization); the FP8 engine's greedy first
tokens must still mostly agree with the bf16 Megatron policy after the refit.

Run on a GPU machine with vLLM: ``pytest -m gpu tests/gpu/test_vllm_refit_cuda.py -s``. Skipped without vLLM.
"""

from __future__ import annotations

import gc

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]

vllm = pytest.importorskip("vllm")

PROMPTS = ["12+34=", "<think>7", "abc", "9*9=", "hello", "3-1="]
NEW_TOKENS = 8


def _architectures(vocab: int) -> dict:
    from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    llama = make_config(
        hidden_size=128,
        num_attention_heads=4,
        vocab_size=vocab,
        blocks=[BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)) for _ in range(4)],
        max_position_embeddings=256,
    )
    return {"llama": llama, "tiny_fixture": tiny_puzzle_config(vocab, max_position_embeddings=256)}


def _policy(cfg, seed: int):
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_

    model = build_puzzle_model(cfg, params_dtype=torch.bfloat16, seq_length=256)
    init_weights_layout_invariant_(model, seed=seed, std=0.05)
    with torch.no_grad():  # sharper logits: greedy decisions with margins bf16 kernels do not flip
        model.output_layer.weight.mul_(8.0)
    return model.eval()


def _perturb_(model, seed: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(
                0.5 * p.float().std().nan_to_num(0.02) * torch.randn(p.shape, generator=gen, device="cuda").to(p.dtype)
            )


def _greedy(engine, ids):
    groups = engine.rollout(ids, n=1, temperature=0.0, max_new_tokens=NEW_TOKENS, seed=0)
    return [g.rollouts[0].completion_ids for g in groups], [g.rollouts[0].logprobs for g in groups]


def _megatron_greedy(model, tokenizer, ids):
    from nemotron_plugins.rl.engines.megatron_engine import MegatronEngineConfig, MegatronRolloutEngine

    engine = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=8))
    return _greedy(engine, ids)


@pytest.fixture(scope="module")
def tokenizer():
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _engine(path, cfg, tokenizer, **kw):
    from nemotron_plugins.rl.engines.vllm_engine import VLLMRolloutEngine

    return VLLMRolloutEngine(
        model_path=str(path),
        tokenizer=tokenizer,
        puzzle_config=cfg,
        dtype="bfloat16",
        gpu_memory_utilization=0.25,
        max_model_len=256,
        enforce_eager=True,
        refit_bucket_bytes=256 << 10,  # many buckets even for a tiny model
        **kw,
    )


@pytest.mark.parametrize("arch", ["llama", "tiny_fixture"])
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_refit_policy_generates_what_megatron_generates(dist, tmp_path, tokenizer, arch, fp8):
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint

    cfg = _architectures(len(tokenizer))[arch]
    model = _policy(cfg, seed=3)
    path = export_hf_checkpoint(model, cfg, tmp_path / "hf", progress=False)
    tokenizer.save_pretrained(str(path))
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]

    engine = _engine(path, cfg, tokenizer, fp8=fp8)
    try:
        stale, _ = _greedy(engine, ids)
        _perturb_(model, seed=4)
        want, want_lp = _megatron_greedy(model, tokenizer, ids)
        assert stale != want, "the update did not change the greedy outputs; the refit check would be vacuous"
        free_before = torch.cuda.mem_get_info()[0]
        report = engine.update_weights(model=model)
        got, got_lp = _greedy(engine, ids)
        free_after_sleep = torch.cuda.mem_get_info()[0]
    finally:
        engine.close()
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    first = sum(g[0] == w[0] for g, w in zip(got, want, strict=True)) / len(want)
    whole = sum(g == w for g, w in zip(got, want, strict=True)) / len(want)
    agreeing = [(gl, wl) for g, w, gl, wl in zip(got, want, got_lp, want_lp, strict=True) if g == w]
    lp_err = max((abs(a - b) for gl, wl in agreeing for a, b in zip(gl, wl, strict=True)), default=float("nan"))
    print(
        f"[gpu] vllm refit {arch} {'fp8' if fp8 else 'bf16'}: {report.tensors} tensors in {report.buckets} buckets "
        f"(largest {report.max_bucket_bytes / 1e6:.2f} MB); greedy first-token agreement {first:.2f}, whole "
        f"{whole:.2f}, max |logprob diff| on agreeing completions {lp_err:.4f}; free memory before refit "
        f"{free_before / 2**30:.2f} GiB, after generate+sleep {free_after_sleep / 2**30:.2f} GiB"
    )
    assert report.buckets > 1 and report.requantized == fp8
    if fp8:
        assert first >= 0.8
    else:
        assert first == 1.0 and whole >= 0.75
        assert lp_err <= 0.1
