"""What of the vLLM engine can be tested without vLLM: the Megatron -> HF weight stream it feeds vLLM (checked
against a transformers Llama forward), its vLLM arguments, output parsing, and the honest error on CPU."""

from __future__ import annotations

import importlib.util
import warnings
from types import SimpleNamespace

import pytest
import torch

from nemotron_plugins.registry import ROLLOUT_ENGINES
from nemotron_plugins.rl.engines.vllm_engine import (
    VLLMEngineConfig,
    VLLMRolloutEngine,
    VLLMUnavailableError,
    megatron_to_hf_weights,
    request_output_to_rollouts,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def dist():
    """The CPU path (gloo, CPU tensors) also on a GPU machine: CUDA is hidden from this module's model tests."""
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(torch.cuda, "is_available", lambda: False)
        warnings.simplefilter("ignore")
        with distributed_context() as ctx:
            assert ctx.device.type == "cpu"
            yield ctx


def test_heterogeneous_weight_names_and_shapes(dist):
    from nemotron_plugins.puzzle.hf_checkpoint import expected_hf_tensors
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    cfg = tiny_puzzle_config(106, max_position_embeddings=64)
    model = build_puzzle_model(cfg, device="cpu")
    got = {name: tuple(t.shape) for name, t in megatron_to_hf_weights(model, cfg, dtype=torch.bfloat16)}
    assert got == {k: tuple(v) for k, v in expected_hf_tensors(cfg).items()}
    assert "model.layers.2.self_attn.linear_attn.weight" in got and "model.layers.3.mlp.linear_mlp.weight" in got
    assert not any(k.startswith("model.layers.3.self_attn") for k in got)  # no-op attention has no weights
    assert got["lm_head.weight"][0] == 106  # vocabulary padding dropped
    assert all(t.dtype == torch.bfloat16 for _, t in megatron_to_hf_weights([model], cfg, dtype=torch.bfloat16))


def test_weights_reproduce_the_megatron_forward_in_transformers_llama(dist):
    """A homogeneous Puzzle model is a Llama: its streamed HF weights must give transformers the same logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
    from nemotron_plugins.puzzle.model import build_puzzle_model

    blocks = [BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96)) for _ in range(2)]
    cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=100, blocks=blocks, max_position_embeddings=64)
    torch.manual_seed(0)
    model = build_puzzle_model(cfg, device="cpu").eval()
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=False,
        )
    ).eval()
    weights = dict(megatron_to_hf_weights(model, cfg))
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m]
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids, torch.arange(12).unsqueeze(0).expand(2, -1), None)[..., :100]
        theirs = hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_llm_arguments():
    cfg = VLLMEngineConfig(model_path="/ckpt", fp8=True, tensor_parallel_size=8, logprobs_mode="processed_logprobs")
    args = cfg.llm_arguments()
    assert args["quantization"] == "fp8" and args["tensor_parallel_size"] == 8 and args["tokenizer"] == "/ckpt"
    assert args["enable_sleep_mode"] is True and args["logprobs_mode"] == "processed_logprobs"
    assert "quantization" not in VLLMEngineConfig(model_path="/ckpt").llm_arguments()
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngineConfig(model_path="/ckpt", gpu_memory_utilization=1.5).validate()


def test_request_output_parsing():
    lp = lambda v: SimpleNamespace(logprob=v)  # noqa: E731 - vLLM's Logprob has a .logprob field
    out = SimpleNamespace(
        outputs=[
            SimpleNamespace(
                index=1, token_ids=[5, 2], text="b", logprobs=[{5: lp(-0.1)}, {2: lp(-0.2)}], finish_reason="stop"
            ),
            SimpleNamespace(index=0, token_ids=(7, 8, 9), text="abc", logprobs=None, finish_reason="length"),
        ]
    )
    rollouts = request_output_to_rollouts(out, [1, 2, 3], eos_token_ids=[2])
    assert [r.completion_text for r in rollouts] == ["abc", "b"]
    assert rollouts[0].finish_reason == "length" and rollouts[0].logprobs is None
    assert rollouts[1].logprobs == pytest.approx([-0.1, -0.2]) and rollouts[1].completion_ids == [5, 2]
    assert rollouts[1].prompt_ids == [1, 2, 3]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_honest_error_without_vllm():
    assert ROLLOUT_ENGINES.get("vllm") is VLLMRolloutEngine
    with pytest.raises(VLLMUnavailableError, match="pip install 'nemotron-plugins\\[vllm\\]'.*'megatron'"):
        VLLMRolloutEngine(model_path="/ckpt")
