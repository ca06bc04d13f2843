"""Checks a recipe before anything is launched: parallelism against the model's layers, batch arithmetic, memory.

:func:`validate_recipe` collects every problem (not just the first) and says which number is wrong, e.g.
``layer 12 has 2 KV heads, not divisible by tensor_model_parallel_size=8``. Trainers call it too, so it lives
under ``nemotron_plugins`` (recipes are the top layer and may not be imported from here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING

from nemotron_plugins.launch.memory import MemoryEstimate, estimate_memory
from nemotron_plugins.launch.pipeline_layout import balanced_layout, even_layout
from nemotron_plugins.preference.config import PREFERENCE_TASKS
from nemotron_plugins.preference.validation import is_online, preference_errors, preference_input_errors

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.puzzle.block_config import PuzzleModelConfig


class RecipeValidationError(ValueError):
    """A recipe cannot run as configured; ``problems`` lists every reason."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"recipe {name!r} is not valid:\n{lines}")


@dataclass(kw_only=True, slots=True)
class ValidationReport:
    """What :func:`validate_recipe` found."""

    name: str
    """Recipe name."""
    errors: list[str] = field(default_factory=list)
    """Problems that stop a launch."""
    warnings: list[str] = field(default_factory=list)
    """Legal but probably unintended settings."""
    memory: MemoryEstimate | None = None
    """Per-GPU memory estimate (when the model and layout are valid)."""
    total_params: int | None = None
    """Model parameters from the cost model."""

    @property
    def ok(self) -> bool:
        """No errors."""
        return not self.errors

    def raise_if_invalid(self) -> None:
        """Raise :class:`RecipeValidationError` listing the errors, if any."""
        if self.errors:
            raise RecipeValidationError(self.name, self.errors)


def _context_parallel_errors(recipe: RecipeConfig) -> list[str]:
    """Context parallelism: SFT (``nemotron_plugins.sft.trainer``) and the GRPO / RLOO update
    (``nemotron_plugins.rl.policy_worker``) split their sequences over CP; RL generation runs whole sequences."""
    p, d, m = recipe.parallel, recipe.data, recipe.model
    cp = p.context_parallel_size
    if cp <= 1:
        return []
    errors: list[str] = []
    if m.layer_spec == "puzzle_local":
        errors.append(
            f"parallel.context_parallel_size={cp} with model.layer_spec='puzzle_local': megatron's local attention "
            "has no context parallelism; use the default spec (SDPA without TE, TE with it)"
        )
    if recipe.is_rl:
        # The update pads every micro-batch to a multiple of 2 x CP itself; generation and the held-out evaluation
        # decode whole sequences (the megatron engine with its CP switched off, every CP rank a generation replica).
        gen = recipe.generation
        if (
            gen is not None
            and gen.engine == "megatron"
            and gen.megatron_layout == "training"
            and m.layer_spec == "puzzle_te"
        ):
            errors.append(
                f"parallel.context_parallel_size={cp} with model.layer_spec='puzzle_te' and generation.engine="
                "'megatron': the megatron engine decodes whole sequences with the training module, and Transformer "
                "Engine's attention keeps its context parallelism inside its kernel; use model.layer_spec="
                "'puzzle_sdpa', generation.megatron_layout='generation' or generation.engine='vllm'"
            )
        return errors
    if recipe.evaluation.num_samples > 0:
        errors.append(
            f"evaluation.num_samples={recipe.evaluation.num_samples} with parallel.context_parallel_size={cp}: SFT's "
            "held-out greedy evaluation decodes whole sequences on one rank (CP=1); set evaluation.num_samples=0 and "
            "evaluate the exported checkpoint"
        )
    multiple = math.lcm(2 * cp, cp * p.tensor_model_parallel_size if p.sequence_parallel else 1)
    if not d.pack_sequences and d.max_seq_length % multiple:
        errors.append(
            f"data.max_seq_length={d.max_seq_length} must be a multiple of {multiple} with "
            f"parallel.context_parallel_size={cp} (2 x CP chunks"
            + (
                f", each rank's share split over TP={p.tensor_model_parallel_size} by sequence parallelism)"
                if p.sequence_parallel
                else ")"
            )
        )
    return errors


def load_model_config(recipe: RecipeConfig) -> PuzzleModelConfig:
    """The architecture the run builds (``model.checkpoint``'s config, an earlier stage's, or
    ``model.config_path``), with ``model.overrides`` applied.

    Raises:
        ValueError: Naming the field when no architecture is given or its file is missing or invalid.
    """
    from nemotron_plugins.training.setup import load_architecture

    return load_architecture(recipe)


def _kv(n: int) -> str:
    return f"{n} KV head" + ("" if n == 1 else "s")


def check_parallelism(recipe: RecipeConfig, cfg: PuzzleModelConfig) -> tuple[list[str], list[str]]:
    """Parallelism checks against the model's layers; returns ``(errors, warnings)``."""
    errors: list[str] = []
    warnings: list[str] = []
    p = recipe.parallel
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    for name, value in (
        ("parallel.tensor_model_parallel_size", tp),
        ("parallel.pipeline_model_parallel_size", pp),
        ("parallel.context_parallel_size", cp),
        ("cluster.nodes", recipe.cluster.nodes),
        ("cluster.devices_per_node", recipe.cluster.devices_per_node),
    ):
        if value < 1:
            errors.append(f"{name}={value} must be >= 1")
    if errors:
        return errors, warnings

    world = recipe.world_size
    model_parallel = tp * pp * cp
    if world % model_parallel:
        errors.append(
            f"world size {world} (cluster.nodes={recipe.cluster.nodes} x cluster.devices_per_node="
            f"{recipe.cluster.devices_per_node}) is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {model_parallel}"
        )
    elif p.data_parallel_size is not None and p.data_parallel_size * model_parallel != world:
        errors.append(
            f"world size {world} != TP x PP x CP x DP = {tp} x {pp} x {cp} x {p.data_parallel_size} = "
            f"{model_parallel * p.data_parallel_size} (parallel.data_parallel_size={p.data_parallel_size}; "
            f"it would be {world // model_parallel} for this world size)"
        )

    heads = cfg.num_attention_heads
    if heads % tp:
        errors.append(f"num_attention_heads={heads} is not divisible by tensor_model_parallel_size={tp}")
    for i, block in enumerate(cfg.blocks):
        attn, ffn = block.attention, block.ffn
        if attn.kind == "gqa" and attn.num_key_value_heads % tp:
            errors.append(
                f"layer {i} has {_kv(attn.num_key_value_heads)}, not divisible by tensor_model_parallel_size={tp}"
            )
        if ffn.kind == "swiglu" and ffn.intermediate_size % tp:
            errors.append(
                f"layer {i} has FFN width {ffn.intermediate_size}, not divisible by tensor_model_parallel_size={tp}"
            )
    if (any(b.attention.kind == "linear" or b.ffn.kind == "linear" for b in cfg.blocks)) and cfg.hidden_size % tp:
        errors.append(
            f"hidden_size={cfg.hidden_size} (linear replacement blocks) is not divisible by tensor_model_parallel_size={tp}"
        )
    if p.sequence_parallel and tp == 1:
        errors.append("parallel.sequence_parallel=true needs tensor_model_parallel_size > 1")
    if tp > recipe.cluster.devices_per_node:
        warnings.append(
            f"tensor_model_parallel_size={tp} spans nodes (cluster.devices_per_node={recipe.cluster.devices_per_node}); "
            "TP traffic will cross the inter-node network"
        )

    n = cfg.num_hidden_layers
    if p.pipeline_layout is not None:
        layout = list(p.pipeline_layout)
        if len(layout) != pp:
            errors.append(f"parallel.pipeline_layout has {len(layout)} stages but pipeline_model_parallel_size={pp}")
        if any(c < 1 for c in layout):
            bad = [i for i, c in enumerate(layout) if c < 1]
            errors.append(f"parallel.pipeline_layout stage(s) {bad} hold no layers; every stage needs >= 1")
        if sum(layout) != n:
            errors.append(
                f"parallel.pipeline_layout covers {sum(layout)} layers but the model has {n} "
                f"({'missing' if sum(layout) < n else 'extra'} {abs(sum(layout) - n)})"
            )
    elif pp > n:
        errors.append(f"pipeline_model_parallel_size={pp} exceeds the model's {n} layers")
    elif even_layout(n, pp) is None:
        from nemotron_plugins.puzzle.cost import estimate_cost

        cost = estimate_cost(cfg)
        suggestion = balanced_layout(
            [layer.params for layer in cost.layers],
            pp,
            first_stage_extra=cost.embedding_params,
            last_stage_extra=cost.lm_head_params + cost.final_norm_params,
        )
        errors.append(
            f"{n} layers do not split evenly over pipeline_model_parallel_size={pp}; set parallel.pipeline_layout, "
            f"e.g. the parameter-balanced {suggestion}"
        )

    seq = recipe.model.seq_length
    if cp > 1 and seq % (2 * cp):
        errors.append(f"model.seq_length={seq} is not divisible by 2 x context_parallel_size = {2 * cp}")
    if seq > cfg.max_position_embeddings:
        errors.append(
            f"model.seq_length={seq} exceeds the model's max_position_embeddings={cfg.max_position_embeddings}"
        )

    gen = recipe.generation
    if gen is not None:
        gtp = gen.tensor_model_parallel_size
        if gtp < 1 or world % gtp:
            errors.append(f"generation.tensor_model_parallel_size={gtp} does not divide the world size {world}")
        else:
            if heads % gtp:
                errors.append(
                    f"num_attention_heads={heads} is not divisible by generation.tensor_model_parallel_size={gtp}"
                )
            for i, block in enumerate(cfg.blocks):
                attn = block.attention
                if attn.kind == "gqa" and attn.num_key_value_heads % gtp:
                    errors.append(
                        f"layer {i} has {_kv(attn.num_key_value_heads)}, not divisible by "
                        f"generation.tensor_model_parallel_size={gtp}"
                    )
    return errors, warnings


def check_batches(recipe: RecipeConfig) -> list[str]:
    """Batch arithmetic and per-task consistency; returns the errors."""
    errors: list[str] = []
    p = recipe.parallel
    mp = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    dp = recipe.data_parallel_size if mp > 0 and recipe.world_size % mp == 0 else None
    mbs, gbs = recipe.micro_batch_size, recipe.global_batch_size
    if mbs < 1 or gbs < 1:
        errors.append(f"micro_batch_size={mbs} and global_batch_size={gbs} must be >= 1")
    elif dp is not None and gbs % (mbs * dp):
        errors.append(f"global_batch_size={gbs} is not divisible by micro_batch_size x DP = {mbs} x {dp} = {mbs * dp}")
    if recipe.train_steps < 1:
        errors.append(f"train_steps={recipe.train_steps} must be >= 1")
    if recipe.stop_after_steps is not None and not 1 <= recipe.stop_after_steps <= recipe.train_steps:
        errors.append(
            f"stop_after_steps={recipe.stop_after_steps} must be between 1 and train_steps={recipe.train_steps}"
        )
    if recipe.is_rl:
        for part in ("algorithm", "generation", "rewards"):
            if not getattr(recipe, part):
                errors.append(f"task {recipe.task!r} needs {part} to be set")
        alg = recipe.algorithm
        if alg is not None:
            if alg.algorithm != recipe.task:
                errors.append(f"algorithm.algorithm={alg.algorithm!r} does not match task={recipe.task!r}")
            samples = alg.rollout_size * alg.epochs_per_rollout
            if gbs >= 1 and (samples % gbs or alg.rollout_size % gbs):
                errors.append(
                    f"global_batch_size={gbs} must divide the rollout of algorithm.num_prompts_per_rollout x "
                    f"num_generations = {alg.num_prompts_per_rollout} x {alg.num_generations} = {alg.rollout_size}"
                )
            if alg.algorithm == "rloo" and not alg.leave_one_out_baseline:
                errors.append("algorithm.algorithm='rloo' needs algorithm.leave_one_out_baseline=true")
        gen = recipe.generation
        if gen is not None and recipe.data.max_seq_length + gen.max_new_tokens > recipe.model.seq_length:
            errors.append(
                f"data.max_seq_length + generation.max_new_tokens = {recipe.data.max_seq_length} + {gen.max_new_tokens} "
                f"= {recipe.data.max_seq_length + gen.max_new_tokens} exceeds model.seq_length={recipe.model.seq_length}"
            )
        if alg is not None and gen is not None and alg.overlong_buffer and alg.overlong_buffer >= gen.max_new_tokens:
            errors.append(
                f"algorithm.overlong_buffer={alg.overlong_buffer} must be < generation.max_new_tokens="
                f"{gen.max_new_tokens} (the soft overlong penalty ramps over the last overlong_buffer tokens of the "
                "generation budget); lower it or raise the budget"
            )
        for i, spec in enumerate(recipe.rewards or []):
            if spec.weight == 0:
                errors.append(f"rewards[{i}] ({spec.name}) has weight 0; drop it instead")
    elif recipe.task in PREFERENCE_TASKS:
        pass  # preference_errors below
    else:
        for part in ("algorithm", "generation", "rewards", "sampler"):
            if getattr(recipe, part) is not None:
                errors.append(f"task 'sft' does not use {part}; set it to null")
        if recipe.data.max_seq_length > recipe.model.seq_length:
            errors.append(
                f"data.max_seq_length={recipe.data.max_seq_length} exceeds model.seq_length={recipe.model.seq_length}"
            )
    errors.extend(preference_errors(recipe))  # the reward_model / rpo tasks (and a stray preference block)
    if recipe.cluster.device == "cpu" and recipe.optimizer.bf16:
        errors.append("optimizer.bf16=true is GPU-only; CPU recipes train in fp32")
    return errors


def _generation_layout_errors(recipe: RecipeConfig) -> list[str]:
    """``generation.megatron_layout``: a known value, and only with the megatron engine (vLLM always generates at
    its own layout)."""
    gen = recipe.generation
    if gen is None:
        return []
    if gen.megatron_layout not in ("training", "generation"):
        return [f"generation.megatron_layout={gen.megatron_layout!r}: valid are 'training' and 'generation'"]
    if gen.engine != "megatron" and gen.megatron_layout != "training":
        return [
            f"generation.megatron_layout={gen.megatron_layout!r} is a megatron-engine setting; "
            f"generation.engine={gen.engine!r} always generates at generation.tensor_model_parallel_size"
        ]
    return []


def _async_rollout_errors(recipe: RecipeConfig) -> list[str]:
    """``generation.async_rollouts``: GRPO / RLOO only, with an engine whose weights the update does not touch, and
    with the importance-sampling correction of the one-step-stale rollouts."""
    gen = recipe.generation
    if gen is None or not gen.async_rollouts:
        return []
    if not recipe.is_rl:
        return [f"generation.async_rollouts=true is a GRPO / RLOO setting; task {recipe.task!r} does not overlap"]
    errors = []
    if gen.engine == "megatron" and gen.megatron_layout == "training":
        errors.append(
            "generation.async_rollouts=true with generation.engine='megatron' at generation.megatron_layout="
            "'training': that engine decodes with the model being updated, so generation cannot overlap the update; "
            "set generation.megatron_layout='generation' (a copy refitted after each update) or generation.engine="
            "'vllm'"
        )
    if recipe.algorithm is not None and not recipe.algorithm.importance_sampling_correction:
        errors.append(
            "generation.async_rollouts=true trains on rollouts of the previous policy version: set "
            "algorithm.importance_sampling_correction=true (the truncated weight pi_old / pi_generator corrects for it)"
        )
    return errors


def blend_errors(recipe: RecipeConfig) -> list[str]:
    """``data.blend`` (CrossThink-style weighted sources): each source's settings, naming ``data.blend[i].<field>``,
    and the settings it cannot be combined with."""
    from nemotron_plugins.data.blend import TEMPLATES
    from nemotron_plugins.launch.recipe_config import RL_TASKS

    d = recipe.data
    if d.blend is None:
        return []
    errors: list[str] = []
    if d.dataset != "post_training":
        errors.append(f"data.blend needs data.dataset='post_training' (got {d.dataset!r})")
    if d.path:
        errors.append("data.blend and data.path are both set: a blend lists its files itself; remove data.path")
    if recipe.task not in ("sft", *RL_TASKS):
        errors.append(f"data.blend is read by SFT, GRPO and RLOO; task {recipe.task!r} reads data.path")
    if not d.blend:
        errors.append("data.blend=[] has no sources; list them or set data.blend=null")
    rewards = [r.name for r in recipe.rewards or []]
    for i, s in enumerate(d.blend):
        key = f"data.blend[{i}]"
        if not isinstance(s.path, str) or not s.path:
            errors.append(f"{key}.path must be a file or directory of rows, got {s.path!r}")
        if isinstance(s.weight, bool) or not isinstance(s.weight, int | float) or not math.isfinite(s.weight):
            errors.append(f"{key}.weight={s.weight!r} must be a finite number > 0")
        elif s.weight <= 0:
            errors.append(f"{key}.weight={s.weight} must be > 0 (leave the source out instead)")
        if s.template not in TEMPLATES:
            errors.append(f"{key}.template={s.template!r} is unknown; valid: {list(TEMPLATES)}")
        elif recipe.task == "sft" and s.template != "as_is":
            errors.append(
                f"{key}.template={s.template!r}: SFT rows keep their prompt and target; use 'as_is' (templates "
                "rewrite RL prompts)"
            )
        if s.max_rows is not None and s.max_rows < 1:
            errors.append(f"{key}.max_rows={s.max_rows} must be >= 1 (or null: all rows)")
        if s.max_answer_words is not None:
            if s.template != "open_ended":
                errors.append(f"{key}.max_answer_words applies to template='open_ended' only")
            elif s.max_answer_words < 1:
                errors.append(f"{key}.max_answer_words={s.max_answer_words} must be >= 1")
        if s.domain is not None and not str(s.domain).strip():
            errors.append(f"{key}.domain is empty; name it or leave it null (the file name)")
        if s.reward is not None:
            if not recipe.is_rl:
                errors.append(f"{key}.reward is an RL setting; task {recipe.task!r} scores no rewards")
            elif s.reward not in rewards:
                errors.append(f"{key}.reward={s.reward!r} is not one of the recipe's rewards {rewards}")
    return errors


def check_fields(recipe: RecipeConfig) -> list[str]:
    """Settings a run of this task would not act on are refused, naming the field (a setting is used or
    refused); returns the errors."""
    from nemotron_plugins.launch.recipe_config import DATASETS, EvalConfig, GenerationConfig

    errors: list[str] = []
    m, d, ev, p = recipe.model, recipe.data, recipe.evaluation, recipe.parallel
    if m.init == "random":
        if m.checkpoint:
            errors.append("model.checkpoint is set but model.init='random'; use one of them")
        if not m.config_path:
            errors.append("model.init='random' needs model.config_path (the architecture to initialise)")
    if (m.params_dtype == "bfloat16") != bool(recipe.optimizer.bf16):
        errors.append(
            f"model.params_dtype={m.params_dtype!r} with optimizer.bf16={recipe.optimizer.bf16}: bf16 training keeps "
            "bfloat16 parameters with fp32 main weights in the optimizer; set both or neither"
        )
    if m.params_dtype == "float16":
        errors.append("model.params_dtype='float16' is not supported (no loss scaling); use bfloat16 or float32")
    if d.dataset not in DATASETS:
        errors.append(f"data.dataset={d.dataset!r} is unknown; valid: {list(DATASETS)}")
    elif d.dataset == "synthetic_addition":
        if d.synthetic is None:
            errors.append("data.synthetic is required for data.dataset='synthetic_addition'")
        else:
            for name in ("corrupt_fraction", "reversed_answer_fraction"):
                if not 0.0 <= getattr(d.synthetic, name) <= 1.0:
                    errors.append(f"data.synthetic.{name}={getattr(d.synthetic, name)} must be in [0, 1]")
        for name in ("path", "eval_path"):
            if getattr(d, name):
                errors.append(f"data.{name} is set but data.dataset='synthetic_addition' writes its own files")
        if d.splits:
            errors.append("data.splits filters Post-Training categories; the synthetic task has one (leave it empty)")
    else:
        if d.synthetic is not None:
            errors.append(f"data.synthetic is set but data.dataset={d.dataset!r}; remove it")
    if d.pack_sequences and m.layer_spec == "puzzle_local":
        errors.append(
            "data.pack_sequences with model.layer_spec='puzzle_local': megatron's local attention takes no "
            "PackedSeqParams; use the default spec (SDPA without TE, TE with it)"
        )
    errors.extend(_context_parallel_errors(recipe))
    errors.extend(_generation_layout_errors(recipe))
    errors.extend(_async_rollout_errors(recipe))
    errors.extend(blend_errors(recipe))
    if recipe.checkpoint.keep_last < 1:
        errors.append(f"checkpoint.keep_last={recipe.checkpoint.keep_last} must be >= 1")
    if recipe.checkpoint.save_interval < 0:
        errors.append(f"checkpoint.save_interval={recipe.checkpoint.save_interval} must be >= 0")
    if recipe.logging.log_interval < 1:
        errors.append(f"logging.log_interval={recipe.logging.log_interval} must be >= 1")
    if ev.num_samples < 0 or ev.interval < 0:
        errors.append("evaluation.num_samples and evaluation.interval must be >= 0")
    if recipe.reward_workers is not None and recipe.reward_workers < 1:
        errors.append(f"reward_workers={recipe.reward_workers} must be >= 1 (or null: one worker per reward)")
    if not recipe.reward_timeout_s > 0:
        errors.append(f"reward_timeout_s={recipe.reward_timeout_s} must be > 0")
    if not 0 <= recipe.max_reward_failure_rate <= 1:
        errors.append(f"max_reward_failure_rate={recipe.max_reward_failure_rate} must be in [0, 1]")
    defaults_eval = EvalConfig()
    if recipe.is_rl:
        if d.pack_sequences:
            errors.append("data.pack_sequences is an SFT setting; RL packs its rollouts itself (set it to false)")
        if not d.dynamic_padding:
            errors.append("data.dynamic_padding=false is an SFT setting; RL pads each rollout to its longest sample")
        if ev.batch_size != defaults_eval.batch_size:
            errors.append(
                "evaluation.batch_size is an SFT setting; RL evaluation decodes generation.batch_size at once"
            )
        names = [r.name for r in recipe.rewards or []]
        for key in ("accuracy_reward", "format_reward"):
            value = getattr(ev, key)
            if value is not None and value not in names:
                errors.append(f"evaluation.{key}={value!r} is not one of the recipe's rewards {names}")
        gen = recipe.generation
        if gen is not None and gen.engine == "megatron":
            defaults = GenerationConfig()
            at_training = gen.megatron_layout == "training"
            if at_training and gen.tensor_model_parallel_size != p.tensor_model_parallel_size:
                errors.append(
                    f"generation.tensor_model_parallel_size={gen.tensor_model_parallel_size}: the megatron engine "
                    f"generates with the policy at its training TP ({p.tensor_model_parallel_size}); set them equal, "
                    "or generation.megatron_layout='generation' for a copy at its own TP"
                )
            if at_training and p.pipeline_model_parallel_size > 1:
                errors.append(
                    "parallel.pipeline_model_parallel_size > 1 with generation.engine='megatron' at "
                    "generation.megatron_layout='training': it decodes with the whole model on each rank; set "
                    "generation.megatron_layout='generation' (a whole-model copy refreshed by the refit stream) or "
                    "generation.engine='vllm'"
                )
            for name in ("fp8", "kv_cache_dtype", "max_num_seqs", "gpu_memory_utilization"):
                if getattr(gen, name) != getattr(defaults, name):
                    errors.append(f"generation.{name} is a vLLM setting; the megatron engine does not use it")
        if gen is not None and gen.engine == "vllm" and gen.batch_size != GenerationConfig().batch_size:
            errors.append("generation.batch_size is the megatron engine's; vLLM batches with generation.max_num_seqs")
        if gen is not None and gen.engine not in ("megatron", "vllm"):
            errors.append(f"generation.engine={gen.engine!r}: the trainer drives 'megatron' or 'vllm'")
    elif recipe.task in PREFERENCE_TASKS:
        pass  # checked by preference_errors (check_batches)
    else:
        if recipe.reward_workers is not None:
            errors.append("reward_workers is an RL setting; SFT scores no rewards")
        defaults = {f.name: f.default for f in dataclass_fields(type(recipe))}
        for name in ("reward_timeout_s", "max_reward_failure_rate"):
            if getattr(recipe, name) != defaults[name]:
                errors.append(f"{name} is an RL setting; SFT scores no rewards")
        if not ev.greedy:
            errors.append("evaluation.greedy=false: SFT evaluation is always greedy (an RL setting)")
        for key in ("accuracy_reward", "format_reward"):
            if getattr(ev, key) is not None:
                errors.append(f"evaluation.{key} is an RL setting; SFT evaluation has no rewards")
        if ev.num_samples and ev.max_new_tokens is None:
            errors.append("evaluation.max_new_tokens is required for SFT evaluation (evaluation.num_samples > 0)")
        if ev.num_samples and d.dataset == "post_training" and not d.eval_path:
            errors.append("evaluation.num_samples > 0 needs data.eval_path (held-out prompts with ground_truth)")
    return errors


def check_inputs(recipe: RecipeConfig) -> list[str]:
    """The checkpoint, tokenizer and data the run reads exist and look right; returns the errors (each naming the
    field, the path and how to get it)."""
    from nemotron_plugins.data.sources import missing_path_message

    errors: list[str] = []
    m, d = recipe.model, recipe.data
    if m.init == "checkpoint" and not m.checkpoint and not recipe.init_checkpoint and not recipe.init_from_recipe:
        hub = m.hub_id or "ORG/MODEL"
        errors.append(
            f"model.checkpoint is not set: recipe {recipe.name!r} starts from {m.hub_id or 'a Hugging Face checkpoint'}; "
            f"download it once (e.g. `huggingface-cli download {hub} --local-dir DIR`) and pass model.checkpoint=DIR "
            "(or init_checkpoint=<an earlier stage's checkpoints>)"
        )
    if m.checkpoint:
        path = Path(m.checkpoint)
        if not (path / "config.json").is_file():
            errors.append(
                f"model.checkpoint={m.checkpoint}: no config.json there (an HF checkpoint directory is needed)"
            )
        elif not any(path.glob("*.safetensors")):
            errors.append(f"model.checkpoint={m.checkpoint}: no *.safetensors weights there")
    if recipe.init_checkpoint and not recipe.init_from_recipe and not Path(recipe.init_checkpoint).exists():
        errors.append(f"init_checkpoint={recipe.init_checkpoint} does not exist")
    for i, source in enumerate(d.blend or []):
        if isinstance(source.path, str) and source.path and not Path(source.path).exists():
            errors.append(f"data.blend[{i}].path={source.path} does not exist")
        elif isinstance(source.path, str) and source.path:
            errors.extend(_blend_source_errors(i, source.path))
    if d.dataset == "post_training":
        if not d.path and d.blend is None:
            errors.append(missing_path_message(d))
        elif d.path and not Path(d.path).exists():
            errors.append(f"data.path={d.path} does not exist")
        if d.eval_path and not Path(d.eval_path).exists():
            errors.append(f"data.eval_path={d.eval_path} does not exist")
    if d.tokenizer and d.tokenizer != "tiny" and not Path(d.tokenizer).is_dir():
        errors.append(f"data.tokenizer={d.tokenizer}: not a directory with tokenizer files (or 'tiny')")
    if m.checkpoint and m.config_path and (Path(m.checkpoint) / "config.json").is_file():
        errors.extend(_compare_architectures(m.checkpoint, m.config_path))
    if d.dataset == "post_training" and d.path and Path(d.path).exists():
        errors.extend(check_data_schema(recipe, "data.path", d.path))
        if d.eval_path and Path(d.eval_path).exists():
            errors.extend(check_data_schema(recipe, "data.eval_path", d.eval_path, prompts=True))
    if (
        recipe.sampler is not None
        and recipe.sampler.pass_rates_path
        and not Path(recipe.sampler.pass_rates_path).is_file()
    ):
        errors.append(
            f"sampler.pass_rates_path={recipe.sampler.pass_rates_path} does not exist (write it with "
            "`nemotron-plugins curriculum estimate`)"
        )
    errors.extend(preference_input_errors(recipe))
    return errors


def _compare_architectures(checkpoint: str, config_path: str) -> list[str]:
    """``model.config_path`` (checked before the download) must describe ``model.checkpoint``'s architecture."""
    from nemotron_plugins.puzzle.block_config import BlockConfigError, load_hf_config

    try:
        weights = load_hf_config(checkpoint)
        planned = load_hf_config(config_path)
    except (BlockConfigError, OSError, ValueError) as exc:
        return [f"model.config_path / model.checkpoint: {exc}"]
    if weights.architecture() != planned.architecture() or weights.hidden_size != planned.hidden_size:
        return [
            f"model.config_path={config_path} describes another architecture than model.checkpoint={checkpoint}; "
            "set model.config_path=null to use the checkpoint's own config.json"
        ]
    return []


def _blend_source_errors(index: int, path: str) -> list[str]:
    """A blend source must be readable and decode at least one of its first rows (the blend itself drops and counts
    rows its template or the verifiable filter cannot use, per source and reason)."""
    from itertools import islice

    from nemotron_plugins.data.rows import read_rows

    key = f"data.blend[{index}].path={path}"
    try:
        if not any(raw.row is not None for raw in islice(read_rows(path), SCHEMA_SAMPLE_ROWS)):
            return [f"{key}: no readable rows in the first {SCHEMA_SAMPLE_ROWS}"]
    except (OSError, ValueError, KeyError, ImportError) as exc:
        return [f"{key}: cannot be read: {exc}"]
    return []


SCHEMA_SAMPLE_ROWS = 200
"""Rows of each data file the validation reads (the trainer counts every bad row of the whole file)."""


def check_data_schema(recipe: RecipeConfig, field_name: str, path: str, *, prompts: bool | None = None) -> list[str]:
    """The first rows of a Post-Training data source have the columns the task reads; returns the errors.

    SFT rows need ``input``, ``output``, ``reasoning`` and ``system_prompt``; RL prompt rows need ``messages`` (or
    ``input``) and ``ground_truth``, and a ``reward`` column must name one of the recipe's rewards.
    """
    from itertools import islice

    from nemotron_plugins.data.rows import REQUIRED_FIELDS, read_rows

    prompts = (recipe.is_rl or is_online(recipe)) if prompts is None else prompts
    rewards = {r.name for r in recipe.rewards or []}
    decoded = 0
    try:
        for raw in islice(read_rows(path), SCHEMA_SAMPLE_ROWS):
            if raw.row is None:
                continue  # counted as a bad row by the reader; one bad line does not make the file wrong
            decoded += 1
            where = f"{field_name}={path} row {raw.line}"
            if raw.row.get("tools") is not None and not _renders_tools(recipe.data.chat_template):
                return [
                    f"{where}: the row has 'tools' but data.chat_template={recipe.data.chat_template!r} renders no "
                    "tools; use 'llama-nemotron-nano'"
                ]
            if prompts:
                if "ground_truth" not in raw.row or not ("messages" in raw.row or "input" in raw.row):
                    return [f"{where}: an RL prompt row needs 'messages' (or 'input') and 'ground_truth'"]
                reward = raw.row.get("reward")
                if reward is not None and reward not in rewards:
                    return [
                        f"{where}: column 'reward' names {reward!r}, not one of the recipe's rewards {sorted(rewards)}"
                    ]
            else:
                missing = [k for k in REQUIRED_FIELDS if k not in raw.row]
                if missing:
                    return [f"{where}: Post-Training SFT rows need {list(REQUIRED_FIELDS)}; missing {missing}"]
    except (OSError, ValueError, KeyError, ImportError) as exc:
        return [f"{field_name}={path}: cannot be read: {exc}"]
    if decoded == 0:
        return [f"{field_name}={path}: no readable rows in the first {SCHEMA_SAMPLE_ROWS}"]
    return []


def _renders_tools(template: str) -> bool:
    """Whether the chat template renders a row's ``tools`` (an unknown template is reported by its own check)."""
    from nemotron_plugins.chat.catalog import get_template

    try:
        return get_template(template).supports_tools
    except Exception:  # noqa: BLE001 - the template check names an unknown template
        return True


def check_rewards(recipe: RecipeConfig) -> list[str]:
    """Each reward builds with its options (an unknown option is refused by the reward's constructor)."""
    errors: list[str] = []
    from nemotron_plugins.rewards.base import build_reward

    for i, spec in enumerate(recipe.rewards or []):
        try:
            reward = build_reward(spec.name, **spec.options)
        except Exception as exc:  # noqa: BLE001 - report any constructor failure against the field
            errors.append(f"rewards[{i}].options for {spec.name!r}: {type(exc).__name__}: {exc}")
            continue
        close = getattr(reward, "close", None)
        if callable(close):
            close()
    return errors


def check_plugins(recipe: RecipeConfig) -> list[str]:
    """Names the recipe selects must be registered (rewards, sampler, algorithm, engine, chat template)."""
    from nemotron_plugins.registry import (
        ALGORITHMS,
        BATCH_SAMPLERS,
        CHAT_TEMPLATES,
        LAYER_SPECS,
        REWARDS,
        ROLLOUT_ENGINES,
    )

    errors = []
    wanted = [(CHAT_TEMPLATES, "data.chat_template", recipe.data.chat_template)]
    if recipe.model.layer_spec is not None:
        wanted.append((LAYER_SPECS, "model.layer_spec", recipe.model.layer_spec))
    if recipe.sampler is not None:
        wanted.append((BATCH_SAMPLERS, "sampler.name", recipe.sampler.name))
    if recipe.algorithm is not None:
        wanted.append((ALGORITHMS, "algorithm.algorithm", recipe.algorithm.algorithm))
    if recipe.generation is not None:
        wanted.append((ROLLOUT_ENGINES, "generation.engine", recipe.generation.engine))
    for i, spec in enumerate(recipe.rewards or []):
        wanted.append((REWARDS, f"rewards[{i}].name", spec.name))
    for registry, key, name in wanted:
        if name not in registry:
            errors.append(
                f"{key}={name!r} is not a registered {registry.kind} plugin; registered: {', '.join(registry.names())}"
            )
    return errors


def validate_recipe(
    recipe: RecipeConfig, *, memory: bool = True, plugins: bool = True, inputs: bool = True
) -> ValidationReport:
    """Run every pre-launch check on ``recipe``; never raises for a bad recipe (see ``raise_if_invalid``).

    One validation, shared by ``recipes validate``, ``train`` and ``launch``: batch arithmetic, settings the task
    does not use, registered plugins, the inputs (checkpoint, tokenizer, data files), the architecture against the
    parallel layout, and memory per GPU.

    Args:
        recipe: The run config.
        memory: Also estimate per-GPU memory and compare with ``cluster.gpu_memory_gb``.
        plugins: Also check that the selected plugin names are registered and the rewards build.
        inputs: Also check that the checkpoint, tokenizer and data files exist.

    Returns:
        A report with ``errors``, ``warnings``, the memory estimate and the parameter count.
    """
    from nemotron_plugins.training.setup import RunSetupError

    report = ValidationReport(name=recipe.name)
    report.errors.extend(check_batches(recipe))
    report.errors.extend(check_fields(recipe))
    if plugins:
        plugin_errors = check_plugins(recipe)
        report.errors.extend(plugin_errors)
        if not plugin_errors:
            report.errors.extend(check_rewards(recipe))
    if inputs:
        report.errors.extend(check_inputs(recipe))
    try:
        cfg = load_model_config(recipe)
    except RunSetupError as exc:
        if not any(str(exc).split(":")[0] in e for e in report.errors):
            report.errors.append(str(exc))
        return report
    errors, warnings = check_parallelism(recipe, cfg)
    report.errors.extend(errors)
    report.warnings.extend(warnings)
    from nemotron_plugins.launch.memory import kv_cache_dtype_bytes
    from nemotron_plugins.puzzle.cost import estimate_cost

    cost = estimate_cost(cfg)
    report.total_params = cost.total_params
    if memory and not errors:
        estimate = estimate_memory(recipe, cfg, estimate_cost(cfg, dtype_bytes=kv_cache_dtype_bytes(recipe)))
        report.memory = estimate
        if not estimate.fits:
            report.errors.append(
                f"estimated memory per {'GPU' if recipe.cluster.device == 'cuda' else 'process'} "
                f"{estimate.peak / 1e9:.1f} GB exceeds cluster.gpu_memory_gb={recipe.cluster.gpu_memory_gb:g} "
                f"({estimate.summary()})"
            )
    return report


def validate_for_run(recipe: RecipeConfig) -> ValidationReport:
    """The validation a trainer runs before any work: :func:`validate_recipe` without the memory estimate
    (``cluster`` sizes the launch, the world here may be a scaled-down one), plus the world size actually running.

    Raises:
        RecipeValidationError: Listing every problem.
    """
    import os

    report = validate_recipe(recipe, memory=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        import torch

        if torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
        if recipe.cluster.device == "cuda" and not torch.cuda.is_available():
            report.errors.append("cluster.device='cuda' but CUDA is not available here; use cluster.device=cpu")
    except ImportError:  # pragma: no cover - torch ships with the package
        pass
    p = recipe.parallel
    mp = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    if mp and world % mp:
        report.errors.append(f"this run has {world} process(es), not a multiple of TP x PP x CP = {mp}")
    elif mp:
        dp = world // mp
        if recipe.global_batch_size % (recipe.micro_batch_size * dp):
            report.errors.append(
                f"global_batch_size={recipe.global_batch_size} is not divisible by micro_batch_size x DP = "
                f"{recipe.micro_batch_size} x {dp} for the {world} process(es) running"
            )
    report.raise_if_invalid()
    return report


def parallel_summary(recipe: RecipeConfig) -> str:
    """``TP8 PP18 CP2 DP2 (SP) on 72x8`` style one-liner."""
    p = recipe.parallel
    text = (
        f"TP{p.tensor_model_parallel_size} PP{p.pipeline_model_parallel_size} CP{p.context_parallel_size} "
        f"DP{recipe.data_parallel_size}{' +SP' if p.sequence_parallel else ''} on {recipe.cluster.nodes}x"
        f"{recipe.cluster.devices_per_node} {recipe.cluster.device}"
    )
    if recipe.generation is not None:
        gtp = recipe.generation.tensor_model_parallel_size
        text += f"; generation TP{gtp} DP{math.floor(recipe.world_size / max(1, gtp))}"
    return text
