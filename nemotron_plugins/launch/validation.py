"""Checks a recipe before anything is launched: parallelism against the model's layers, batch arithmetic, memory.

:func:`validate_recipe` collects every problem (not just the first) and says which number is wrong, e.g.
``layer 12 has 2 KV heads, not divisible by tensor_model_parallel_size=8``. Trainers call it too, so it lives
under ``nemotron_plugins`` (recipes are the top layer and may not be imported from here).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nemotron_plugins.launch.memory import MemoryEstimate, estimate_memory
from nemotron_plugins.launch.pipeline_layout import balanced_layout, even_layout

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
    from nemotron_plugins.runtime.config import ModelConfig


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


def load_model_config(model: ModelConfig) -> PuzzleModelConfig:
    """Load the architecture a :class:`ModelConfig` points at, with its top-level ``overrides`` applied.

    Raises:
        ValueError: If the config names no ``hf_config_path`` (builtin architectures are resolved by the trainer).
        nemotron_plugins.puzzle.block_config.BlockConfigError: If the file is missing or invalid.
    """
    from nemotron_plugins.puzzle.block_config import BlockConfigError, parse_hf_config

    if model.hf_config_path is None:
        raise ValueError(f"model.hf_config_path is not set (architecture={model.architecture!r}); cannot check layers")
    path = Path(model.hf_config_path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BlockConfigError(str(path), "no such file (model.hf_config_path)") from None
    except json.JSONDecodeError as err:
        raise BlockConfigError(str(path), f"not valid JSON at line {err.lineno}, column {err.colno}") from None
    data.update(model.overrides)
    return parse_hf_config(data, source=str(path))


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
    if recipe.is_rl:
        for part in ("algorithm", "generation", "rewards"):
            if not getattr(recipe, part):
                errors.append(f"task {recipe.task!r} needs {part} to be set")
        alg = recipe.algorithm
        if alg is not None:
            if alg.name != recipe.task:
                errors.append(f"algorithm.name={alg.name!r} does not match task={recipe.task!r}")
            samples = alg.prompts_per_rollout * alg.generations_per_prompt
            if alg.updates_per_rollout < 1 or samples % alg.updates_per_rollout:
                errors.append(
                    f"a rollout of {alg.prompts_per_rollout} prompts x {alg.generations_per_prompt} generations = "
                    f"{samples} samples does not split into algorithm.updates_per_rollout={alg.updates_per_rollout} updates"
                )
            elif samples // alg.updates_per_rollout != gbs:
                errors.append(
                    f"global_batch_size={gbs} but a rollout gives {samples} samples / {alg.updates_per_rollout} updates "
                    f"= {samples // alg.updates_per_rollout} per update"
                )
            if alg.name == "rloo" and not alg.leave_one_out_baseline:
                errors.append("algorithm.name='rloo' needs algorithm.leave_one_out_baseline=true")
            if alg.generations_per_prompt < 2:
                errors.append(
                    f"algorithm.generations_per_prompt={alg.generations_per_prompt}: group baselines need >= 2"
                )
        gen = recipe.generation
        if gen is not None and recipe.data.max_seq_length + gen.max_new_tokens > recipe.model.seq_length:
            errors.append(
                f"data.max_seq_length + generation.max_new_tokens = {recipe.data.max_seq_length} + {gen.max_new_tokens} "
                f"= {recipe.data.max_seq_length + gen.max_new_tokens} exceeds model.seq_length={recipe.model.seq_length}"
            )
        for i, spec in enumerate(recipe.rewards or []):
            if spec.weight == 0:
                errors.append(f"rewards[{i}] ({spec.name}) has weight 0; drop it instead")
    else:
        for part in ("algorithm", "generation", "rewards", "sampler"):
            if getattr(recipe, part) is not None:
                errors.append(f"task 'sft' does not use {part}; set it to null")
        if recipe.data.max_seq_length > recipe.model.seq_length:
            errors.append(
                f"data.max_seq_length={recipe.data.max_seq_length} exceeds model.seq_length={recipe.model.seq_length}"
            )
    if recipe.cluster.device == "cpu" and recipe.optimizer.bf16:
        errors.append("optimizer.bf16=true is GPU-only; CPU recipes train in fp32")
    return errors


def check_plugins(recipe: RecipeConfig) -> list[str]:
    """Names the recipe selects must be registered (rewards, sampler, algorithm, engine, chat template)."""
    from nemotron_plugins.registry import ALGORITHMS, BATCH_SAMPLERS, CHAT_TEMPLATES, REWARDS, ROLLOUT_ENGINES

    errors = []
    wanted = [(CHAT_TEMPLATES, "data.chat_template", recipe.data.chat_template)]
    if recipe.sampler is not None:
        wanted.append((BATCH_SAMPLERS, "sampler.name", recipe.sampler.name))
    if recipe.algorithm is not None:
        wanted.append((ALGORITHMS, "algorithm.name", recipe.algorithm.name))
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


def validate_recipe(recipe: RecipeConfig, *, memory: bool = True, plugins: bool = True) -> ValidationReport:
    """Run every pre-launch check on ``recipe``; never raises for a bad recipe (see ``raise_if_invalid``).

    Args:
        recipe: The run config.
        memory: Also estimate per-GPU memory and compare with ``cluster.gpu_memory_gb``.
        plugins: Also check that the selected plugin names are registered.

    Returns:
        A report with ``errors``, ``warnings``, the memory estimate and the parameter count.
    """
    from nemotron_plugins.puzzle.block_config import BlockConfigError

    report = ValidationReport(name=recipe.name)
    report.errors.extend(check_batches(recipe))
    if plugins:
        report.errors.extend(check_plugins(recipe))
    try:
        cfg = load_model_config(recipe.model)
    except (ValueError, BlockConfigError) as exc:
        report.errors.append(f"model: {exc}")
        return report
    errors, warnings = check_parallelism(recipe, cfg)
    report.errors.extend(errors)
    report.warnings.extend(warnings)
    from nemotron_plugins.puzzle.cost import estimate_cost

    cost = estimate_cost(cfg)
    report.total_params = cost.total_params
    if memory and not errors:
        kv_bytes = (
            {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}[recipe.generation.kv_cache_dtype]
            if recipe.generation
            else 2
        )
        estimate = estimate_memory(recipe, cfg, estimate_cost(cfg, dtype_bytes=kv_bytes))
        report.memory = estimate
        if not estimate.fits:
            report.errors.append(
                f"estimated memory per {'GPU' if recipe.cluster.device == 'cuda' else 'process'} "
                f"{estimate.peak / 1e9:.1f} GB exceeds cluster.gpu_memory_gb={recipe.cluster.gpu_memory_gb:g} "
                f"({estimate.summary()})"
            )
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
