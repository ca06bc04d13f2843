"""Pre-launch validation: TP vs heads / KV heads per layer, PP layouts, world size, batch arithmetic, memory."""

from __future__ import annotations

import itertools

import pytest

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.memory import estimate_memory
from nemotron_plugins.launch.pipeline_layout import balanced_layout, stage_ranges
from nemotron_plugins.launch.validation import RecipeValidationError, load_model_config, validate_recipe
from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config, save_hf_config


@pytest.fixture
def hetero_config(tmp_path):
    """16 layers, 16 heads; layer 12 has 2 KV heads, the others 8; layer 3 is a no-op attention."""
    blocks = []
    for i in range(16):
        attn = AttentionConfig.no_op() if i == 3 else AttentionConfig.gqa(2 if i == 12 else 8)
        blocks.append(BlockConfig(attention=attn, ffn=FFNConfig.swiglu(512)))
    cfg = make_config(hidden_size=256, num_attention_heads=16, vocab_size=512, blocks=blocks)
    path = tmp_path / "config.json"
    save_hf_config(cfg, path)
    return str(path)


def recipe_on(path: str, *overrides: str):
    return build_recipe(
        "tiny_puzzle_sft_cpu",
        [f"model.config_path={path}", "model.seq_length=128", "data.max_seq_length=128", *overrides],
    )


def test_kv_heads_message_names_layer_and_tp(hetero_config) -> None:
    report = validate_recipe(
        recipe_on(
            hetero_config,
            "parallel.tensor_model_parallel_size=8",
            "cluster.devices_per_node=8",
            "global_batch_size=64",
        )
    )
    assert "layer 12 has 2 KV heads, not divisible by tensor_model_parallel_size=8" in report.errors
    assert len([e for e in report.errors if "KV head" in e]) == 1  # the no-op layer 3 is not checked
    with pytest.raises(RecipeValidationError, match="layer 12 has 2 KV heads"):
        report.raise_if_invalid()


def test_valid_heterogeneous_layout_passes(hetero_config) -> None:
    report = validate_recipe(
        recipe_on(
            hetero_config,
            "parallel.tensor_model_parallel_size=2",
            "parallel.pipeline_model_parallel_size=3",
            "parallel.pipeline_layout=[7,5,4]",
            "cluster.devices_per_node=6",
            "global_batch_size=64",
        )
    )
    assert report.ok, report.errors


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["parallel.pipeline_model_parallel_size=3", "cluster.devices_per_node=3", "global_batch_size=63"],
            "16 layers do not split evenly over pipeline_model_parallel_size=3; set parallel.pipeline_layout, e.g. the parameter-balanced [",
        ),
        (
            [
                "parallel.pipeline_model_parallel_size=2",
                "parallel.pipeline_layout=[8,7]",
                "cluster.devices_per_node=2",
            ],
            "parallel.pipeline_layout covers 15 layers but the model has 16 (missing 1)",
        ),
        (
            ["parallel.pipeline_model_parallel_size=2", "parallel.pipeline_layout=[16]", "cluster.devices_per_node=2"],
            "parallel.pipeline_layout has 1 stages but pipeline_model_parallel_size=2",
        ),
        (
            [
                "parallel.pipeline_model_parallel_size=2",
                "parallel.pipeline_layout=[16,0]",
                "cluster.devices_per_node=2",
            ],
            "stage(s) [1] hold no layers",
        ),
        (
            ["parallel.tensor_model_parallel_size=2", "cluster.devices_per_node=3"],
            "world size 3 (cluster.nodes=1 x cluster.devices_per_node=3) is not divisible by TP x PP x CP = 2 x 1 x 1 = 2",
        ),
        (["parallel.data_parallel_size=4", "cluster.devices_per_node=2"], "world size 2 != TP x PP x CP x DP"),
        (["parallel.sequence_parallel=true"], "sequence_parallel=true needs tensor_model_parallel_size > 1"),
        (
            [
                "parallel.context_parallel_size=2",
                "cluster.devices_per_node=2",
                "model.seq_length=126",
                "data.max_seq_length=64",
            ],
            "model.seq_length=126 is not divisible by 2 x context_parallel_size = 4",
        ),
        (
            ["cluster.devices_per_node=2", "global_batch_size=63"],
            "global_batch_size=63 is not divisible by micro_batch_size x DP",
        ),
        (["optimizer.bf16=true"], "optimizer.bf16=true is GPU-only"),
    ],
)
def test_errors_say_which_number_is_wrong(hetero_config, overrides, fragment) -> None:
    report = validate_recipe(recipe_on(hetero_config, "micro_batch_size=1", *overrides))
    assert any(fragment in e for e in report.errors), report.errors


def test_rl_consistency_checks() -> None:
    cfg = build_recipe(
        "tiny_puzzle_grpo_cpu", ["global_batch_size=64", "generation.max_new_tokens=200", "rewards.0.name=nope"]
    )
    errors = validate_recipe(cfg).errors
    assert any("global_batch_size=64" not in e for e in errors)  # 64 divides the 128-sample rollout: 2 updates
    assert any(
        "data.max_seq_length + generation.max_new_tokens = 128 + 200 = 328 exceeds model.seq_length=256" in e
        for e in errors
    )
    assert any("rewards[0].name='nope' is not a registered rewards plugin" in e for e in errors)


def test_overlong_buffer_must_fit_the_generation_budget() -> None:
    cfg = build_recipe("tiny_puzzle_grpo_cpu", ["algorithm.overlong_buffer=64"])
    budget = cfg.generation.max_new_tokens
    errors = validate_recipe(cfg).errors
    assert (budget > 64) == (not any("algorithm.overlong_buffer" in e for e in errors))
    errors = validate_recipe(build_recipe("tiny_puzzle_grpo_cpu", [f"algorithm.overlong_buffer={budget}"])).errors
    assert any(f"algorithm.overlong_buffer={budget} must be < generation.max_new_tokens={budget}" in e for e in errors)


def test_generation_tp_must_divide_kv_heads(hetero_config) -> None:
    cfg = build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            f"model.config_path={hetero_config}",
            "generation.tensor_model_parallel_size=4",
            "cluster.devices_per_node=4",
            "micro_batch_size=1",
        ],
    )
    assert (
        "layer 12 has 2 KV heads, not divisible by generation.tensor_model_parallel_size=4"
        in validate_recipe(cfg).errors
    )


def test_memory_overflow_is_an_error() -> None:
    cfg = build_recipe(
        "llama_nemotron_super_49b_sft_64gpu_h100_bf16",
        [
            "cluster.nodes=1",
            "parallel.tensor_model_parallel_size=8",
            "parallel.pipeline_model_parallel_size=1",
            "parallel.pipeline_layout=null",
            "global_batch_size=8",
        ],
    )
    report = validate_recipe(cfg)
    assert report.memory is not None and not report.memory.fits
    assert any("exceeds cluster.gpu_memory_gb=80" in e for e in report.errors)


def test_memory_formula_by_hand(hetero_config) -> None:
    # fp32, TP1, PP1, no distributed optimizer: 16 bytes per parameter; activations per layer
    # a*s*b*(2h + 2q + 2k) + a*s*b*(2h + 3f) for GQA + SwiGLU layers.
    cfg = recipe_on(hetero_config, "micro_batch_size=2", "global_batch_size=4")
    model = load_model_config(cfg)
    est = estimate_memory(cfg, model)
    stage = est.stages[0]
    from nemotron_plugins.puzzle.cost import estimate_cost

    params = estimate_cost(model).total_params
    assert stage.weights + stage.gradients + stage.optimizer == pytest.approx(16 * params)
    a, s, b, h, f, q = 4, 128, 2, 256, 512, 256
    gqa = {i: (2 if i == 12 else 8) * 16 for i in range(16) if i != 3}
    act = sum(a * s * b * (2 * h + 2 * q + 2 * k) for k in gqa.values()) + 16 * a * s * b * (2 * h + 3 * f)
    assert stage.activations == pytest.approx(act)  # one micro-batch in flight with PP1
    assert stage.logits == pytest.approx(s * b * 512 * (a + 4))
    assert est.overhead == 0 and est.peak == pytest.approx(stage.total)


def test_memory_counts_the_rpo_reference_and_the_rollout_engines_own_weights() -> None:
    # Online RPO: a frozen reference (fp32 here: the weights' bytes again) and the rollouts' KV cache; the megatron
    # engine at the training layout decodes with the training weights (no second copy).
    rpo = build_recipe("tiny_rpo_online_cpu")
    est = estimate_memory(rpo, load_model_config(rpo))
    stage = est.stages[0]
    assert stage.reference == pytest.approx(stage.weights) and stage.reference > 0
    assert est.kv_cache > 0 and est.generation_weights == 0 and est.resident_generation_copy == 0
    assert est.generation == pytest.approx(stage.weights + est.kv_cache)
    # The megatron engine's generation layout keeps a whole-model copy through training as well.
    grpo = build_recipe("tiny_puzzle_grpo_cpu", ["generation.megatron_layout=generation"])
    colocated = estimate_memory(build_recipe("tiny_puzzle_grpo_cpu"), load_model_config(grpo))
    copy = estimate_memory(grpo, load_model_config(grpo))
    assert copy.resident_generation_copy == copy.generation_weights > 0 and colocated.generation_weights == 0
    assert copy.training == pytest.approx(colocated.training + copy.generation_weights)
    assert copy.generation == pytest.approx(colocated.generation + copy.generation_weights)
    assert "resident rollout-engine copy" in copy.summary()


def test_distributed_optimizer_shards_over_dp_and_cp() -> None:
    cfg = build_recipe("llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16")
    est = estimate_memory(cfg, load_model_config(cfg))
    for stage in est.stages:
        assert stage.optimizer == pytest.approx(stage.params * 12 / (2 * 2), rel=1e-6)
        assert stage.weights == pytest.approx(stage.params * 2, rel=1e-6)


def _brute_force(costs, pp, first, last):
    best = None
    n = len(costs)
    for cuts in itertools.combinations(range(1, n), pp - 1):
        bounds = (0, *cuts, n)
        loads = [sum(costs[bounds[i] : bounds[i + 1]]) for i in range(pp)]
        loads[0] += first
        loads[-1] += last
        if best is None or max(loads) < best:
            best = max(loads)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_balanced_layout_is_optimal(seed) -> None:
    import random

    rng = random.Random(seed)
    n = rng.randint(3, 9)
    pp = rng.randint(1, n)
    costs = [rng.choice([0, 1, 5, 20]) for _ in range(n)]
    first, last = rng.choice([0, 3]), rng.choice([0, 3])
    layout = balanced_layout(costs, pp, first_stage_extra=first, last_stage_extra=last)
    assert len(layout) == pp and sum(layout) == n and min(layout) >= 1
    loads = [sum(costs[r.start : r.stop]) for r in stage_ranges(layout)]
    loads[0] += first
    loads[-1] += last
    assert max(loads) == _brute_force(costs, pp, first, last)


def test_balanced_layout_rejects_too_many_stages() -> None:
    with pytest.raises(ValueError, match="between 1 and 3"):
        balanced_layout([1, 2, 3], 4)


@pytest.mark.parametrize(
    ("recipe", "overrides", "fragment"),
    [
        ("tiny_puzzle_sft_cpu", ["reward_workers=2"], "reward_workers is an RL setting"),
        (
            "tiny_puzzle_sft_cpu",
            ["evaluation.greedy=false"],
            "evaluation.greedy=false: SFT evaluation is always greedy",
        ),
        ("tiny_puzzle_sft_cpu", ["evaluation.accuracy_reward=math"], "evaluation.accuracy_reward is an RL setting"),
        ("tiny_puzzle_sft_cpu", ["data.path=/x"], "data.path is set but data.dataset='synthetic_addition'"),
        ("tiny_puzzle_sft_cpu", ["data.splits=[math]"], "data.splits filters Post-Training categories"),
        ("tiny_puzzle_sft_cpu", ["model.checkpoint=/x"], "model.checkpoint is set but model.init='random'"),
        ("tiny_puzzle_sft_cpu", ["model.params_dtype=bfloat16"], "model.params_dtype='bfloat16' with optimizer.bf16"),
        (
            "tiny_puzzle_grpo_cpu",
            ["parallel.context_parallel_size=2", "cluster.devices_per_node=2", "model.layer_spec=puzzle_te"],
            "Transformer Engine's attention keeps its context parallelism inside its kernel",
        ),
        (
            "tiny_puzzle_grpo_cpu",
            ["parallel.context_parallel_size=2", "cluster.devices_per_node=2", "model.layer_spec=puzzle_local"],
            "megatron's local attention has no context parallelism",
        ),
        (
            "tiny_puzzle_sft_cpu",
            ["parallel.context_parallel_size=2", "cluster.devices_per_node=2", "data.max_seq_length=90"],
            "data.max_seq_length=90 must be a multiple of 4",
        ),
        (
            "tiny_puzzle_sft_cpu",
            ["parallel.context_parallel_size=2", "cluster.devices_per_node=2", "model.layer_spec=puzzle_local"],
            "megatron's local attention has no context parallelism",
        ),
        (
            "tiny_puzzle_sft_cpu",
            ["parallel.context_parallel_size=2", "cluster.devices_per_node=2", "evaluation.num_samples=4"],
            "evaluation.num_samples=4 with parallel.context_parallel_size=2",
        ),
        ("tiny_puzzle_grpo_cpu", ["data.pack_sequences=true"], "data.pack_sequences is an SFT setting"),
        (
            "tiny_puzzle_sft_cpu",
            ["data.pack_sequences=true", "model.layer_spec=puzzle_local"],
            "megatron's local attention takes no PackedSeqParams",
        ),
        ("tiny_puzzle_grpo_cpu", ["data.dynamic_padding=false"], "data.dynamic_padding=false is an SFT setting"),
        ("tiny_puzzle_grpo_cpu", ["evaluation.batch_size=8"], "evaluation.batch_size is an SFT setting"),
        ("tiny_puzzle_grpo_cpu", ["generation.fp8=true"], "generation.fp8 is a vLLM setting"),
        (
            "tiny_puzzle_grpo_cpu",
            ["generation.gpu_memory_utilization=0.9"],
            "generation.gpu_memory_utilization is a vLLM",
        ),
        (
            "tiny_puzzle_grpo_cpu",
            ["generation.tensor_model_parallel_size=2", "cluster.devices_per_node=2"],
            "the megatron engine generates with the policy at its training TP",
        ),
        ("tiny_puzzle_grpo_cpu", ["evaluation.format_reward=nope"], "evaluation.format_reward='nope' is not one of"),
        ("tiny_puzzle_grpo_cpu", ["rewards.0.options={'no_such_option': 1}"], "rewards[0].options for 'math'"),
        ("tiny_puzzle_grpo_cpu", ["data.synthetic=null"], "data.synthetic is required"),
        (
            "tiny_puzzle_sft_cpu",
            ["data.synthetic.reversed_answer_fraction=1.5"],
            "data.synthetic.reversed_answer_fraction=1.5 must be in [0, 1]",
        ),
        ("tiny_puzzle_sft_cpu", ["model.layer_spec=nope"], "model.layer_spec='nope' is not a registered"),
    ],
)
def test_unused_settings_are_refused(recipe, overrides, fragment) -> None:
    """A setting the run would not act on is refused, naming the field (a setting is used or refused)."""
    errors = validate_recipe(build_recipe(recipe, overrides)).errors
    assert any(fragment in e for e in errors), errors


def test_missing_inputs_name_the_field_and_how_to_get_them() -> None:
    errors = validate_recipe(build_recipe("llama_nemotron_super_49b_sft_64gpu_h100_bf16")).errors
    (model,) = [e for e in errors if e.startswith("model.checkpoint")]
    assert "huggingface-cli download nvidia/Llama-3_3-Nemotron-Super-49B-v1 --local-dir DIR" in model
    (data,) = [e for e in errors if e.startswith("data.path")]
    assert "nvidia/Llama-Nemotron-Post-Training-Dataset" in data


def test_data_schema_and_architecture_are_checked(tmp_path) -> None:
    from nemotron_plugins.fixtures import write_fixtures

    fixture = write_fixtures(tmp_path / "fx")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": [{"role": "user", "content": "hi"}], "output": "x"}\n')
    base = [
        f"model.checkpoint={fixture.checkpoint}",
        "model.params_dtype=float32",
        "optimizer.bf16=false",
        "parallel.tensor_model_parallel_size=1",
        "parallel.pipeline_model_parallel_size=1",
        "parallel.pipeline_layout=null",
        "cluster.nodes=1",
        "cluster.devices_per_node=1",
        "model.seq_length=512",
        "data.max_seq_length=256",
    ]
    errors = validate_recipe(
        build_recipe("llama_nemotron_nano_8b_sft_8gpu_h100_bf16", [*base, f"data.path={bad}"])
    ).errors
    assert any("Post-Training SFT rows need" in e and "missing ['reasoning', 'system_prompt']" in e for e in errors)
    assert any("model.config_path=" in e and "describes another architecture" in e for e in errors)


def test_rl_validates_with_context_parallelism() -> None:
    """GRPO / RLOO split sequences over CP (the update pads to 2 x CP itself; generation and the held-out
    evaluation decode whole sequences), so the SFT-only CP rules do not apply to them."""
    config = build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            "parallel.context_parallel_size=2",
            "cluster.devices_per_node=2",
            "data.max_seq_length=90",  # not a multiple of 2 x CP: RL pads its micro-batches itself
            "evaluation.num_samples=4",
        ],
    )
    report = validate_recipe(config)
    assert report.ok, report.errors
