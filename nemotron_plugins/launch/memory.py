r"""Per-GPU memory estimate of a recipe, from the Puzzle cost model.

All sizes in bytes; reported in GB (1e9 bytes; an 80 GB H100 has 85.5e9 bytes, so the check is conservative).
Notation: ``t`` = tensor parallel, ``p`` = pipeline parallel, ``c`` = context parallel, ``d`` = data parallel,
``s`` = ``model.seq_length / c`` tokens per micro-batch per rank, ``b`` = micro-batch size, ``h`` = hidden,
``f`` = a layer's FFN width, ``q = heads * head_dim``, ``k = kv_heads * head_dim``, ``V`` = vocabulary,
``t_sp`` = ``t`` with sequence parallelism else 1, ``M`` = micro-batches per step = ``global_batch / (b * d)``.

Training, for every pipeline stage ``i`` (the estimate is the worst stage):

* parameters per GPU ``P_i / t`` where ``P_i`` sums the cost model's per-layer parameters of the stage's layers, plus
  the embedding on stage 0 and the final norm + output layer on the last stage;
* weights + gradients + optimizer states per parameter:

  - bf16 (``optimizer.bf16``): 2 (bf16 weight) + 4 (fp32 main grad) + 12 (fp32 master copy, Adam m and v);
  - fp32: 4 (weight) + 4 (grad) + 8 (Adam m and v);
  - with ``use_distributed_optimizer`` the optimizer part (12 or 8) is divided by ``d * c``, the ranks megatron
    shards it over, giving megatron's familiar ``6 + 12 / (d c)`` bytes per parameter for bf16;
  - a frozen reference copy (2 bytes bf16, 4 fp32) for RL with ``algorithm.beta > 0`` and for RPO / DPO
    (``task="rpo"``: the implicit reward is ``beta * log(pi / ref)``);
  - a megatron rollout engine with weights of its own (``generation.megatron_layout="generation"``) keeps its
    whole-model copy ``2 * total / t_gen`` (``total / t_gen`` with FP8) allocated through the training phase too;

* activations of one micro-batch in one layer, in activation-dtype bytes ``a`` (2 bf16, 4 fp32); flash attention is
  assumed (no ``s^2`` score tensor), and only what the backward pass keeps is counted:

  - GQA attention: ``a * s * b * (2h / t_sp + (2q + 2k) / t)`` (norm and QKV inputs; q, k, v and the context);
  - linear attention or linear FFN: ``a * s * b * 2h / t_sp``;
  - SwiGLU FFN: ``a * s * b * (2h / t_sp + 3f / t)`` (norm and FC1 inputs; gate, up and their product);
  - no-op: 0;
  - ``recompute="full"`` keeps only each layer's input ``a * s * b * h / t_sp`` plus the largest single layer
    (recomputed in the backward pass); ``selective`` recomputes the attention core, which flash attention already
    does not store, so it counts like ``none``;

  stage ``i`` holds ``min(p - i, M)`` micro-batches in flight under the 1F1B schedule;
* logits on the last stage: ``s * b * V / t * (a + 4)`` (the logits plus their fp32 softmax for the loss).

Generation (RL and online RPO; colocated on the same GPUs, like the paper's vLLM + Megatron setup): the trainer's
gradients and optimizer states are offloaded to host memory while generating, the bf16 training weights stay. Per GPU:

* training weights ``2 * P_i / t`` of the worst stage;
* generation weights ``total / t_gen`` at 1 byte (FP8 generation) or 2 bytes, embedding and output layer bf16, for
  engines with weights of their own (vLLM, the megatron engine's ``generation`` layout); the megatron engine at the
  training layout decodes with the training weights themselves (0);
* KV cache ``kv_bytes_per_token / t_gen * seqs * (prompt + max_new_tokens)`` where ``seqs`` is the rollout's
  sequences (GRPO / RLOO: ``prompts * generations``; online RPO: ``global_batch_size * preference.num_generations``)
  divided over the ``world / t_gen`` generation replicas (at most ``max_num_seqs``) and the per-token bytes come from
  the cost model at the KV-cache dtype.

Peak = max(training, generation) + a fixed runtime overhead (CUDA context, NCCL buffers, allocator fragmentation:
4 GB on GPUs, 0 on CPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from nemotron_plugins.launch.pipeline_layout import even_layout, stage_ranges

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
    from nemotron_plugins.puzzle.cost import ModelCost

GB = 1e9
GPU_RUNTIME_OVERHEAD_BYTES = 4 * GB
"""CUDA context, NCCL buffers and allocator fragmentation, per GPU."""

_KV_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}


def kv_cache_dtype_bytes(recipe: RecipeConfig) -> int:
    """Bytes per KV-cache element: ``generation.kv_cache_dtype``, ``auto`` = the model's parameter dtype."""
    gen = recipe.generation
    dtype = gen.kv_cache_dtype if gen is not None else "auto"
    if dtype == "auto":
        dtype = recipe.model.params_dtype
    return _KV_DTYPE_BYTES[dtype]


@dataclass(kw_only=True, slots=True)
class StageMemory:
    """Training memory of one pipeline stage, per GPU, in bytes."""

    stage: int
    """Pipeline stage index."""
    layers: tuple[int, int]
    """First and one-past-last layer index."""
    params: int
    """Parameters of the stage per GPU (``P_i / t``)."""
    weights: float
    """Model weights."""
    gradients: float
    """Main gradients."""
    optimizer: float
    """Optimizer states (master copy and Adam moments), sharded when the distributed optimizer is on."""
    reference: float
    """Frozen reference-policy weights (RL with a KL penalty, RPO / DPO)."""
    activations: float
    """Activations kept for the backward pass, all in-flight micro-batches."""
    logits: float
    """Output logits and their softmax (last stage only)."""

    @property
    def total(self) -> float:
        """Sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations + self.logits


@dataclass(kw_only=True, slots=True)
class MemoryEstimate:
    """Peak per-GPU memory of a recipe (bytes), with its parts."""

    stages: list[StageMemory]
    """Training memory per pipeline stage."""
    worst_stage: int
    """Index of the stage with the largest training memory."""
    training: float
    """Training memory of the worst stage."""
    generation_weights: float = 0.0
    """Rollout-engine weights per GPU (RL, online RPO) when the engine has weights of its own."""
    resident_generation_copy: float = 0.0
    """The part of ``generation_weights`` that stays allocated while training (the megatron engine's
    ``generation`` layout), included in ``training``."""
    kv_cache: float = 0.0
    """KV cache per GPU (RL)."""
    generation: float = 0.0
    """Generation-phase total: resident training weights + generation weights + KV cache (RL)."""
    overhead: float = 0.0
    """Fixed runtime overhead."""
    budget: float = 0.0
    """Device memory available (``cluster.gpu_memory_gb``)."""
    notes: list[str] = field(default_factory=list)
    """Assumptions worth showing (e.g. sequences per generation replica)."""

    @property
    def peak(self) -> float:
        """Max of the training and generation phases plus overhead."""
        return max(self.training, self.generation) + self.overhead

    @property
    def fits(self) -> bool:
        """Whether the peak fits the budget."""
        return self.peak <= self.budget

    def summary(self) -> str:
        """One line in GB, e.g. ``peak 61.2 GB of 80 GB (training 57.2 [stage 0] ...)``."""
        s = self.stages[self.worst_stage]
        parts = (
            f"weights {s.weights / GB:.1f} + grads {s.gradients / GB:.1f} + optimizer {s.optimizer / GB:.1f}"
            + (f" + reference {s.reference / GB:.1f}" if s.reference else "")
            + f" + activations {s.activations / GB:.1f} + logits {s.logits / GB:.1f}"
        )
        text = f"peak {self.peak / GB:.1f} GB of {self.budget / GB:.0f} GB: training {self.training / GB:.1f} GB on stage {self.worst_stage} ({parts})"
        if self.resident_generation_copy:
            text += f" + resident rollout-engine copy {self.resident_generation_copy / GB:.1f}"
        if self.generation:
            text += (
                f"; generation {self.generation / GB:.1f} GB (weights {self.generation_weights / GB:.1f} + "
                f"KV cache {self.kv_cache / GB:.1f} + resident training weights {s.weights / GB:.1f})"
            )
        if self.overhead:
            text += f"; + {self.overhead / GB:.0f} GB runtime overhead"
        return text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict in GB."""
        return {
            "peak_gb": round(self.peak / GB, 3),
            "budget_gb": round(self.budget / GB, 3),
            "fits": self.fits,
            "training_gb": round(self.training / GB, 3),
            "generation_gb": round(self.generation / GB, 3),
            "resident_generation_copy_gb": round(self.resident_generation_copy / GB, 3),
            "worst_stage": self.worst_stage,
            "stages": [
                {k: (round(v / GB, 3) if isinstance(v, float) else v) for k, v in asdict(s).items()}
                for s in self.stages
            ],
            "notes": list(self.notes),
        }


def _layer_activation_bytes(cfg: PuzzleModelConfig, layer: int, *, s: int, b: int, t: int, t_sp: int, a: int) -> float:
    block = cfg.blocks[layer]
    h = cfg.hidden_size
    total = 0.0
    attn = block.attention
    if attn.kind == "gqa":
        q = cfg.num_attention_heads * cfg.head_dim
        k = attn.num_key_value_heads * cfg.head_dim
        total += a * s * b * (2 * h / t_sp + (2 * q + 2 * k) / t)
    elif attn.kind == "linear":
        total += a * s * b * 2 * h / t_sp
    ffn = block.ffn
    if ffn.kind == "swiglu":
        total += a * s * b * (2 * h / t_sp + 3 * ffn.intermediate_size / t)
    elif ffn.kind == "linear":
        total += a * s * b * 2 * h / t_sp
    return total


def estimate_memory(
    recipe: RecipeConfig, cfg: PuzzleModelConfig, cost: ModelCost | None = None, layout: list[int] | None = None
) -> MemoryEstimate:
    """Estimate the per-GPU peak memory of ``recipe`` on model ``cfg`` (formula in the module docstring).

    Args:
        recipe: The run config.
        cfg: The model's architecture.
        cost: The cost model's result for ``cfg`` (computed when omitted).
        layout: Layers per pipeline stage; defaults to the recipe's layout or an even split.

    Returns:
        The estimate (training per stage, generation, peak, budget).

    Raises:
        ValueError: If no layout is given and the layers cannot be split evenly.
    """
    from nemotron_plugins.puzzle.cost import estimate_cost

    p = recipe.parallel
    t, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    d = recipe.data_parallel_size
    t_sp = t if p.sequence_parallel else 1
    bf16 = recipe.optimizer.bf16
    a = 2 if bf16 else 4
    if cost is None:
        kv_bytes = kv_cache_dtype_bytes(recipe)
        cost = estimate_cost(cfg, dtype_bytes=kv_bytes)
    layout = layout or p.pipeline_layout or even_layout(cfg.num_hidden_layers, pp)
    if layout is None:
        raise ValueError(
            f"{cfg.num_hidden_layers} layers do not split evenly over {pp} pipeline stages; give a layout"
        )

    s = max(1, math.ceil(recipe.model.seq_length / cp))
    b = recipe.micro_batch_size
    microbatches = max(1, recipe.global_batch_size // max(1, b * d))
    weight_b, grad_b, opt_b = (2, 4, 12) if bf16 else (4, 4, 8)
    if p.use_distributed_optimizer:
        opt_b = opt_b / (d * cp)
    rl_reference = recipe.is_rl and recipe.algorithm is not None and recipe.algorithm.beta > 0
    ref_b = (2 if bf16 else 4) if (rl_reference or recipe.task == "rpo") else 0

    stages: list[StageMemory] = []
    for i, layers in enumerate(stage_ranges(layout)):
        params = sum(cost.layers[j].params for j in layers)
        if i == 0:
            params += cost.embedding_params
        if i == pp - 1:
            params += cost.final_norm_params + (cost.lm_head_params or (cost.embedding_params if i else 0))
        per_gpu = params / t
        per_layer = [_layer_activation_bytes(cfg, j, s=s, b=b, t=t, t_sp=t_sp, a=a) for j in layers]
        if recipe.recompute == "full":
            act_one = len(per_layer) * a * s * b * cfg.hidden_size / t_sp
            act_extra = max(per_layer, default=0.0)
        else:
            act_one, act_extra = sum(per_layer), 0.0
        in_flight = min(pp - i, microbatches)
        logits = s * b * cfg.vocab_size / t * (a + 4) if i == pp - 1 else 0.0
        stages.append(
            StageMemory(
                stage=i,
                layers=(layers.start, layers.stop),
                params=int(per_gpu),
                weights=per_gpu * weight_b,
                gradients=per_gpu * grad_b,
                optimizer=per_gpu * opt_b,
                reference=per_gpu * ref_b,
                activations=act_one * in_flight + act_extra,
                logits=logits,
            )
        )
    worst = max(range(len(stages)), key=lambda i: stages[i].total)
    gpu = recipe.cluster.device == "cuda"
    estimate = MemoryEstimate(
        stages=stages,
        worst_stage=worst,
        training=stages[worst].total,
        overhead=GPU_RUNTIME_OVERHEAD_BYTES if gpu else 0.0,
        budget=recipe.cluster.gpu_memory_gb * GB,
    )
    gen, rollout = recipe.generation, _rollout_sequences(recipe)
    if gen is not None and rollout:
        t_gen = gen.tensor_model_parallel_size
        replicas = max(1, recipe.world_size // t_gen)
        seqs = math.ceil(rollout / replicas)
        if gen.max_num_seqs is not None:
            seqs = min(seqs, gen.max_num_seqs)
        tokens = recipe.data.max_seq_length + gen.max_new_tokens
        copy_engine = gen.engine == "megatron" and gen.megatron_layout == "generation"  # resident through training
        own_weights = gen.engine != "megatron" or copy_engine
        edge = cost.embedding_params + cost.lm_head_params
        gen_weights = (edge * 2 + (cost.total_params - edge) * (1 if gen.fp8 else 2)) / t_gen if own_weights else 0.0
        kv = cost.kv_cache_bytes_per_token / t_gen * seqs * tokens
        resident = max(st.weights for st in stages)
        estimate.generation_weights = gen_weights
        estimate.kv_cache = kv
        estimate.generation = resident + gen_weights + kv
        if copy_engine:
            estimate.resident_generation_copy = gen_weights
            estimate.training += gen_weights
        estimate.notes.append(
            f"generation: {replicas} replicas of TP{t_gen}, {seqs} concurrent sequences x {tokens} tokens per replica"
            + ("" if own_weights else " (the megatron engine decodes with the training weights)")
        )
    return estimate


def _rollout_sequences(recipe: RecipeConfig) -> int:
    """Sequences one rollout generates: GRPO / RLOO ``prompts * generations``, online RPO ``global_batch_size *
    preference.num_generations``; 0 for runs that generate nothing."""
    alg, pref = recipe.algorithm, recipe.preference
    if recipe.is_rl and alg is not None:
        return alg.num_prompts_per_rollout * alg.num_generations
    if recipe.task == "rpo" and pref is not None and pref.mode == "online":
        return recipe.global_batch_size * pref.num_generations
    return 0
