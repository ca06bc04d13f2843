"""What of the vLLM engine can be tested without vLLM or a GPU.

- The Megatron -> HF weight stream it feeds vLLM (names / padded shapes of the export; a transformers Llama forward).
- Its orchestration against a minimal stand-in of vLLM's interface (``tests/functional/rl/refit_fake_vllm.py``,
  recording calls): ``LLM`` arguments (external launcher, prefix caching, FP8), sleep / wake order around generation
  and refit, the refit's ``collective_rpc`` steps, bucket sizes and names, vLLM's layerwise reload around an FP8
  refit, the prefix-cache reset, refusals (FP8 on a vLLM without layerwise reload, level-2 sleep without refit).
- Output parsing, and the honest error on CPU without vLLM.

Never run here: vLLM itself (generation, its weight loaders' TP sharding, FP8 quantisation kernels, sleep mode's
memory release). ``tests/gpu/test_vllm_refit_cuda.py`` runs those on a GPU machine with vLLM.
"""

from __future__ import annotations

import importlib.util
import warnings
from types import SimpleNamespace

import pytest
import torch

from nemotron_plugins.registry import ROLLOUT_ENGINES
from nemotron_plugins.rl.engines.vllm_engine import (
    VLLMEngineConfig,
    VLLMLayout,
    VLLMRolloutEngine,
    VLLMUnavailableError,
    megatron_to_hf_weights,
    request_output_to_rollouts,
)
from tests.functional.rl.refit_fake_vllm import fake_vllm

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
    from nemotron_plugins.puzzle.hf_checkpoint import expected_hf_tensors, hf_export_layout
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    cfg = tiny_puzzle_config(106, max_position_embeddings=64)
    model = build_puzzle_model(cfg, device="cpu")
    got = {name: tuple(t.shape) for name, t in megatron_to_hf_weights(model, cfg, dtype=torch.bfloat16)}
    # The names and shapes of the exported checkpoint vLLM loads: FFN widths padded as the export pads them.
    exported = expected_hf_tensors(hf_export_layout(cfg).export_cfg)
    assert got == {k: tuple(v) for k, v in exported.items()}
    assert exported != expected_hf_tensors(cfg)  # the tiny widths do need padding
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
    args = cfg.llm_arguments(VLLMLayout(world_size=16, rank=3, tp_size=8))
    assert args["quantization"] == "fp8" and args["tensor_parallel_size"] == 8 and args["tokenizer"] == "/ckpt"
    assert args["enable_sleep_mode"] is True and args["logprobs_mode"] == "processed_logprobs"
    assert args["distributed_executor_backend"] == "external_launcher" and args["enable_prefix_caching"] is True
    assert "data_parallel_size" not in args  # generation DP is vLLM's external DP: world / TP independent engines
    single = VLLMEngineConfig(model_path="/ckpt", enable_prefix_caching=False).llm_arguments()
    assert "quantization" not in single and "distributed_executor_backend" not in single
    assert single["enable_prefix_caching"] is False
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngineConfig(model_path="/ckpt", gpu_memory_utilization=1.5).validate()
    with pytest.raises(ValueError, match="sleep_level"):
        VLLMEngineConfig(model_path="/ckpt", sleep_level=3).validate()
    with pytest.raises(ValueError, match="refit_bucket_bytes"):
        VLLMEngineConfig(model_path="/ckpt", refit_bucket_bytes=0).validate()
    with pytest.raises(ValueError, match=r"llm_kwargs may not set \['quantization'\]"):
        VLLMEngineConfig(model_path="/ckpt", llm_kwargs={"quantization": "awq", "max_num_seqs": 8}).validate()
    with pytest.raises(ValueError, match="VLLMEngineConfig.dtype"):
        VLLMEngineConfig(model_path="/ckpt", dtype="int8").validate()


def test_generation_layout_is_independent_of_training():
    # Training TP8 PP18 CP2 DP2 on 576 GPUs generates at TP8 DP72.
    layouts = [VLLMLayout(world_size=576, rank=r, tp_size=8) for r in range(576)]
    assert {lay.dp_size for lay in layouts} == {72}
    assert [(lay.dp_rank, lay.tp_rank) for lay in layouts[14:17]] == [(1, 6), (1, 7), (2, 0)]
    shards = [VLLMLayout(world_size=6, rank=r, tp_size=2).shard(10) for r in range(6)]
    assert [list(s) for s in shards[::2]] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]  # balanced, contiguous
    assert shards[0] == shards[1]  # both TP ranks of an engine generate the same prompts
    with pytest.raises(ValueError, match="tensor_parallel_size=3 must divide the world size 8"):
        VLLMLayout(world_size=8, rank=0, tp_size=3)


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


# --------------------------------------------------------------------------------------------------------------------
# Orchestration against the stand-in (tests/functional/rl/refit_fake_vllm.py): what the engine asks of vLLM
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(dist):
    """A heterogeneous Puzzle policy (no-op / linear sub-blocks, per-layer KV heads, FFN widths the export pads)."""
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from tests.reference.tiny_checkpoints import tiny_heterogeneous_config

    cfg = tiny_heterogeneous_config()
    torch.manual_seed(0)
    return cfg, build_puzzle_model(cfg, device="cpu")


@pytest.fixture
def gpu_visible(monkeypatch):
    """The engine checks for CUDA before building vLLM; the stand-in needs none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _kinds(events):
    return [e[0] if e[0] != "rpc" else f"rpc:{e[1]}" for e in events if e[0] != "init"]


def test_refit_and_generation_orchestration(policy, gpu_visible):
    cfg, model = policy
    expected = dict(megatron_to_hf_weights(model, cfg, dtype=torch.bfloat16))
    with fake_vllm() as llm_cls:
        engine = VLLMRolloutEngine(
            model_path="/ckpt", puzzle_config=cfg, refit_bucket_bytes=16 << 10, tensor_parallel_size=1
        )
        (llm,) = llm_cls.instances
        assert llm.kwargs["enable_prefix_caching"] is True and "quantization" not in llm.kwargs
        groups = engine.rollout([[5, 6, 7]], n=2, max_new_tokens=4, temperature=0.0)
        assert [r.completion_ids for r in groups[0].rollouts] == [[7, 6, 5, 2]] * 2
        report = engine.update_weights(model=model)
        engine.rollout([[9, 8]], n=1, max_new_tokens=4)
    kinds = _kinds(llm.events)
    loads = kinds.count("load_weights")
    assert kinds == [
        "generate",
        "sleep",  # after generating: training gets the memory
        "wake_up",  # weights only: the refit needs no KV cache
        "rpc:_begin_refit",
        *["rpc:_load_bucket", "load_weights"] * loads,
        "rpc:_finish_refit",
        "reset_prefix_cache",  # cached blocks hold the old policy's keys and values
        "wake_up",  # KV cache only: the weights are awake
        "generate",
        "sleep",
    ]
    wakes = [e for e in llm.events if e[0] == "wake_up"]
    assert wakes == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert ("sleep", 1) in llm.events
    # Every tensor of the exported checkpoint arrived once, in bf16, equal to the stream; buckets bounded.
    names = [n for bucket in llm.model.buckets for n, _, _ in bucket]
    assert names == list(expected) and len(llm.model.buckets) == loads == report.buckets > 3
    assert all(torch.equal(llm.model.full[n], t) for n, t in expected.items())
    assert {dtype for bucket in llm.model.buckets for _, _, dtype in bucket} == {torch.bfloat16}
    sizes = [e[2] for e in llm.events if e[0] == "load_weights"]
    largest_group = 2 * 256 * 32 * 2  # gate + up of a padded FFN in bf16: the largest single unit
    assert max(sizes) <= max(16 << 10, largest_group) and report.max_bucket_bytes == max(sizes)
    assert report.tensors == len(expected) and not report.requantized


def test_fp8_refit_requantizes_through_layerwise_reload(policy, gpu_visible):
    cfg, model = policy
    with fake_vllm() as llm_cls:
        engine = VLLMRolloutEngine(model_path="/ckpt", puzzle_config=cfg, fp8=True, enable_sleep_mode=False)
        report = engine.update_weights(model=model)
    (llm,) = llm_cls.instances
    assert llm.kwargs["quantization"] == "fp8" and report.requantized
    kinds = _kinds(llm.events)
    assert kinds[:2] == ["rpc:_begin_refit", "initialize_layerwise_reload"]  # before the first bucket
    assert kinds[-3:] == ["rpc:_finish_refit", "finalize_layerwise_reload", "reset_prefix_cache"]
    assert ("finalize_layerwise_reload", "<model_config>") in llm.events  # the real model config, not None
    assert "sleep" not in kinds and "wake_up" not in kinds  # sleep mode off


def test_fp8_is_refused_on_a_vllm_without_layerwise_reload(gpu_visible):
    with fake_vllm(layerwise_reload=False), pytest.raises(VLLMUnavailableError, match="fp8=True.*layerwise reload"):
        VLLMRolloutEngine(model_path="/ckpt", fp8=True)


def test_level2_sleep_needs_a_refit_before_generating(policy, gpu_visible):
    cfg, model = policy
    with fake_vllm() as llm_cls:
        engine = VLLMRolloutEngine(model_path="/ckpt", puzzle_config=cfg, sleep_level=2)
        engine.rollout([[1, 2]], n=1, max_new_tokens=2)
        with pytest.raises(RuntimeError, match="sleep_level=2.*refit before generating"):
            engine.rollout([[1, 2]], n=1, max_new_tokens=2)
        engine.update_weights(model=model)
        engine.rollout([[1, 2]], n=1, max_new_tokens=2)
    (llm,) = llm_cls.instances
    assert ("sleep", 2) in llm.events and _kinds(llm.events).count("generate") == 2


def test_state_dict_refit_in_buckets_and_bad_calls(gpu_visible):
    weights = {f"model.layers.{i}.mlp.down_proj.weight": torch.full((8, 64), float(i)) for i in range(5)}
    with fake_vllm() as llm_cls:
        engine = VLLMRolloutEngine(model_path="/ckpt", refit_bucket_bytes=2 * 8 * 64 * 2, enable_sleep_mode=False)
        report = engine.update_weights(weights)
        with pytest.raises(ValueError, match="exactly one of state_dict"):
            engine.update_weights()
        with pytest.raises(ValueError, match="puzzle_config"):
            engine.update_weights(model=torch.nn.Linear(2, 2))
        with pytest.raises(TypeError, match="bucket"):
            engine.update_weights(weights, bucket=1)
    (llm,) = llm_cls.instances
    assert [len(b) for b in llm.model.buckets] == [2, 2, 1] and report.buckets == 3
    assert all(torch.equal(llm.model.full[n], t.bfloat16()) for n, t in weights.items())


def test_tensor_parallel_without_a_process_group_is_refused(gpu_visible, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with fake_vllm(), pytest.raises(ValueError, match="tensor_parallel_size=2 needs that many torchrun ranks"):
        VLLMRolloutEngine(model_path="/ckpt", tensor_parallel_size=2)
