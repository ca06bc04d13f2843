"""Build a run's components from the one run config (:class:`~nemotron_plugins.launch.recipe_config.RecipeConfig`).

Every trainer (SFT, GRPO / RLOO) builds through these functions, so a field of the recipe reaches the same code
whatever the task: the architecture (``model.checkpoint``'s ``config.json``, an earlier stage's checkpoint, or
``model.config_path``, with ``model.overrides``), the tokenizer, the megatron-core model (layer spec, dtype,
recompute, sequence parallel), its initial weights (HF checkpoint read slice by slice, an earlier stage's training
checkpoint, or a random layout-invariant initialisation), megatron DDP + optimizer (the distributed optimizer when
``parallel.use_distributed_optimizer``) and megatron's LR scheduler (warmup, then constant / linear / cosine decay to
``optimizer.min_lr``).

The ``*_settings`` functions return plain dicts of what each component is built with; the builders use them (and
tests read them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.puzzle.block_config import PuzzleModelConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class RunSetupError(ValueError):
    """The run cannot be built as configured; the message names the config field."""


# ----------------------------------------------------------------------------------------------------------------
# Architecture and tokenizer
# ----------------------------------------------------------------------------------------------------------------


def init_checkpoint_files(path: str | os.PathLike[str]) -> tuple[Path | None, Path | None]:
    """``(config.json, tokenizer dir)`` an earlier stage's checkpoint directory carries (``None`` where absent).

    A run's checkpoint root holds the model's HF ``config.json`` and a ``tokenizer/`` directory beside the step
    directories; a step directory is accepted too (its parent is searched).
    """
    root = Path(path)
    for candidate in (root, root.parent):
        config = candidate / "config.json"
        if config.is_file():
            tokenizer = candidate / "tokenizer"
            return config, tokenizer if tokenizer.is_dir() else None
    return None, None


def architecture_source(config: RecipeConfig) -> tuple[str, Path]:
    """``(field, path)`` of the ``config.json`` that defines the model.

    Order: ``model.checkpoint`` (the weights' own config), else ``init_checkpoint`` (an earlier stage), else
    ``model.config_path``.

    Raises:
        RunSetupError: When none is set or the file is missing, naming the field.
    """
    model = config.model
    if model.checkpoint:
        return "model.checkpoint", Path(model.checkpoint) / "config.json"
    if config.init_checkpoint:
        found, _ = init_checkpoint_files(config.init_checkpoint)
        if found is not None:
            return "init_checkpoint", found
    if model.config_path:
        path = Path(model.config_path)
        return "model.config_path", path / "config.json" if path.is_dir() else path
    raise RunSetupError(
        "model: no architecture: set model.checkpoint (an HF checkpoint directory) or model.config_path "
        "(an HF config.json)"
    )


def load_architecture(config: RecipeConfig) -> PuzzleModelConfig:
    """The run's architecture with ``model.overrides`` applied (see :func:`architecture_source`).

    Raises:
        RunSetupError: Naming the field whose file is missing or invalid, or an unknown override key.
    """
    import json

    from nemotron_plugins.puzzle.block_config import BlockConfigError, parse_hf_config

    field_name, path = architecture_source(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunSetupError(f"{field_name}: {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise RunSetupError(f"{field_name}: {path} is not valid JSON (line {err.lineno})") from None
    fusions = fusion_overrides(config)
    architecture = {k: v for k, v in config.model.overrides.items() if k not in fusions}
    unknown = sorted(k for k in architecture if k not in data and k not in _OVERRIDABLE_KEYS)
    if unknown:
        raise RunSetupError(
            f"model.overrides: unknown config keys {unknown}; {path} has {sorted(data)[:40]} (or a megatron fusion "
            "switch: see nemotron_plugins.puzzle.model.FUSION_FIELDS)"
        )
    data.update(architecture)
    try:
        return parse_hf_config(data, source=str(path))
    except BlockConfigError as exc:
        raise RunSetupError(f"{field_name}: {exc}") from None


def fusion_overrides(config: RecipeConfig) -> dict[str, bool]:
    """The megatron fusion switches in ``model.overrides`` (keys of
    :data:`~nemotron_plugins.puzzle.model.FUSION_FIELDS`; every other key overrides the HF architecture). The
    defaults (megatron's torch-only fusions on CUDA, none on CPU) come from
    :func:`~nemotron_plugins.puzzle.model.fusion_settings` when the model is built; that also refuses a fusion whose
    library is missing on the machine that runs it.

    Raises:
        RunSetupError: A fusion switch that is not true / false (naming it).
    """
    from nemotron_plugins.puzzle.model import FUSION_FIELDS

    fusions = {k: v for k, v in config.model.overrides.items() if k in FUSION_FIELDS}
    for name, value in fusions.items():
        if not isinstance(value, bool):
            raise RunSetupError(f"model.overrides.{name} must be true or false, got {value!r}")
    return fusions


_OVERRIDABLE_KEYS = frozenset({"max_position_embeddings", "rope_theta", "rope_scaling", "tie_word_embeddings"})
"""Keys an override may add even when the file leaves them to their defaults."""


def tokenizer_source(config: RecipeConfig) -> tuple[str, str]:
    """``(field, path or builtin name)`` of the run's tokenizer: ``data.tokenizer``, else the tokenizer files of
    ``model.checkpoint``, else those saved with ``init_checkpoint``.

    Raises:
        RunSetupError: When no tokenizer is named anywhere.
    """
    if config.data.tokenizer:
        return "data.tokenizer", config.data.tokenizer
    if config.model.checkpoint:
        return "model.checkpoint", config.model.checkpoint
    if config.init_checkpoint:
        _, tokenizer = init_checkpoint_files(config.init_checkpoint)
        if tokenizer is not None:
            return "init_checkpoint", str(tokenizer)
    raise RunSetupError(
        "data.tokenizer: not set and there is no model.checkpoint (or init_checkpoint) to take the tokenizer from; "
        "set data.tokenizer to a tokenizer directory (or 'tiny' for the builtin character tokenizer)"
    )


def load_run_tokenizer(config: RecipeConfig) -> Any:
    """The run's tokenizer (local files only; see :func:`tokenizer_source`).

    Raises:
        RunSetupError: Naming the field when nothing loads.
    """
    from nemotron_plugins.chat.tokenizer import load_tokenizer

    field_name, source = tokenizer_source(config)
    try:
        return load_tokenizer(source)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise RunSetupError(f"{field_name}: cannot load a tokenizer from {source!r}: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def model_settings(config: RecipeConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`~nemotron_plugins.puzzle.model.build_puzzle_model` for this run (besides the
    architecture): layout, sequence length, dtype, layer spec and the ``TransformerConfig`` fields the recipe sets
    (activation recompute, bf16, fusion switches from ``model.overrides``)."""
    model = config.model
    settings: dict[str, Any] = {
        "parallel": config.parallel,
        "seq_length": model.seq_length,
        "params_dtype": DTYPES[model.params_dtype],
        "bf16": bool(config.optimizer.bf16),
    }
    if model.layer_spec is not None:
        settings["layer_spec"] = model.layer_spec
    settings.update(fusion_overrides(config))
    if config.recompute == "selective":
        settings["recompute_granularity"] = "selective"
    elif config.recompute == "full":
        settings.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return settings


def build_model(config: RecipeConfig, arch: PuzzleModelConfig, *, perform_initialization: bool = False) -> Any:
    """This rank's megatron-core ``GPTModel`` of ``arch`` with the run's :func:`model_settings`."""
    from nemotron_plugins.puzzle.model import build_puzzle_model

    settings = dict(model_settings(config))
    spec = settings.pop("layer_spec", None)
    if spec is not None:
        settings.update(_layer_spec_arguments(spec))
    return build_puzzle_model(arch, perform_initialization=perform_initialization, **settings)


def _layer_spec_arguments(name: str) -> dict[str, Any]:
    """``build_puzzle_model`` arguments selecting the registered layer spec ``name``."""
    import inspect

    from nemotron_plugins.puzzle.model import build_puzzle_model

    if "layer_spec" in inspect.signature(build_puzzle_model).parameters:
        return {"layer_spec": name}
    builtin = {"puzzle_te": True, "puzzle_local": False}
    if name not in builtin:
        raise RunSetupError(f"model.layer_spec={name!r}: this build selects only {sorted(builtin)}")
    return {"use_transformer_engine": builtin[name]}


@dataclass(kw_only=True, slots=True)
class InitialState:
    """Weights an earlier stage saved (single-rank or per-rank state dicts of the ``GPTModel``)."""

    state: dict[str, Any]
    """This rank's model state dict (or the single-rank one, resharded on load)."""
    world_size: int
    """World size of the run that saved it."""
    path: str
    """Where it came from."""


def read_init_checkpoint(path: str | os.PathLike[str]) -> InitialState:
    """The model weights of an earlier stage's training checkpoint (``init_checkpoint``).

    Raises:
        RunSetupError: When ``path`` holds no loadable checkpoint.
    """
    from nemotron_plugins.runtime.checkpoint import CheckpointError, load_training_state

    p = Path(path)
    try:
        if p.is_file():
            import torch

            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            return InitialState(state=state, world_size=1, path=str(p))
        loaded = load_training_state(p, restore_rng=False)
    except (CheckpointError, FileNotFoundError) as exc:
        raise RunSetupError(f"init_checkpoint: {path}: {exc}") from None
    if loaded.model_state is None:
        raise RunSetupError(f"init_checkpoint: {loaded.path} holds no model state")
    return InitialState(state=loaded.model_state, world_size=loaded.world_size, path=str(loaded.path))


def initialise_weights(config: RecipeConfig, model: Any, arch: PuzzleModelConfig) -> str:
    """Fill ``model`` with the run's starting weights; returns where they came from.

    ``init_checkpoint`` (an earlier stage) wins; else ``model.checkpoint`` (HF, each rank reading its slices); else
    (``model.init="random"``) a layout-invariant random initialisation seeded by ``seed``.
    """
    from nemotron_plugins.puzzle.model import init_weights_layout_invariant_

    if config.init_checkpoint:
        from nemotron_plugins.training.checkpointing import latest_checkpoint, load_checkpoint

        root = Path(config.init_checkpoint)
        if root.name.startswith("iter_") or latest_checkpoint(root) is not None:
            # A distributed training checkpoint of an earlier stage: the weights only, at this run's layout.
            loaded = load_checkpoint(root, model=[model], load_rng=False)
            return f"init_checkpoint {loaded['path']} (step {loaded['step']})"
        initial = read_init_checkpoint(root)  # a per-rank .pt checkpoint or a single state-dict file
        load_state_into(model, initial, arch)
        return f"init_checkpoint {initial.path}"
    if config.model.checkpoint:
        from nemotron_plugins.puzzle.hf_checkpoint import load_hf_checkpoint

        load_hf_checkpoint(model, config.model.checkpoint, arch, progress=config.logging.progress_bar)
        return f"model.checkpoint {config.model.checkpoint}"
    if config.model.init != "random":
        raise RunSetupError(
            "model.checkpoint: not set, and model.init is 'checkpoint' (set model.checkpoint, init_checkpoint, or "
            "model.init=random)"
        )
    init_weights_layout_invariant_(model, seed=config.seed)
    return f"random (seed {config.seed})"


def load_state_into(model: Any, initial: InitialState, arch: PuzzleModelConfig) -> None:
    """Load ``initial`` into this rank's ``model``: directly when the layouts match, resharded from a single-rank
    state otherwise."""
    from megatron.core import parallel_state as ps

    state = initial.state
    model_parallel = ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size()
    if model_parallel > 1 and initial.world_size == 1:
        from nemotron_plugins.puzzle.hf_checkpoint import reshard_single_rank_state

        state = reshard_single_rank_state(state, arch, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunSetupError(
            f"init_checkpoint: {initial.path}: its weights do not fit this rank's model (saved by "
            f"{initial.world_size} rank(s); a multi-rank checkpoint loads at the TP / PP layout that wrote it): {exc}"
        ) from None


def write_checkpoint_metadata(save_dir: str | os.PathLike[str], arch: PuzzleModelConfig, tokenizer: Any) -> None:
    """Write the model's HF ``config.json`` and the tokenizer beside a run's checkpoints (rank 0), so a later stage
    (``init_checkpoint``) and ``nemotron-plugins export`` find the architecture and tokenizer there."""
    from nemotron_plugins.puzzle.block_config import save_hf_config

    root = Path(save_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_hf_config(arch, root / "config.json")
    tokenizer.save_pretrained(str(root / "tokenizer"))


def save_run_checkpoint(
    config: RecipeConfig,
    step: int,
    *,
    ddp: Any,
    optimizer: Any,
    scheduler: Any,
    arch: PuzzleModelConfig,
    **extra_config: Any,
) -> None:
    """Save a single-model run's checkpoint (SFT, reward model, RPO) under ``config.checkpoint.save_dir``: model,
    optimizer and scheduler, ``{"step", "seed"}`` as state, and the recipe, task, architecture and ``extra_config``
    in its metadata; nothing when the run has no ``save_dir``."""
    from nemotron_plugins.puzzle.block_config import to_hf_config
    from nemotron_plugins.training.checkpointing import save_checkpoint

    save_dir = config.checkpoint.save_dir
    if not save_dir:
        return
    save_checkpoint(
        save_dir,
        step,
        model=[ddp],
        optimizer=optimizer,
        scheduler=scheduler,
        state={"step": step, "seed": config.seed},
        keep_last=config.checkpoint.keep_last,
        config={"recipe": config.name, "task": config.task, "puzzle_config": to_hf_config(arch), **extra_config},
    )


def run_metrics_logger(
    config: RecipeConfig,
    *,
    resume_step: int,
    progress_keys: list[str],
    jsonl_path: str | os.PathLike[str] | None = None,
) -> Any:
    """The run's ``MetricsLogger`` from ``config.logging`` (``jsonl_path`` when the config names none), counting
    ``config.train_steps`` steps from ``resume_step`` and showing ``progress_keys`` on the progress bar."""
    from nemotron_plugins.runtime.metrics import MetricsLogger

    logging_cfg = config.logging
    return MetricsLogger(
        jsonl_path=logging_cfg.jsonl_path or jsonl_path,
        tensorboard_dir=logging_cfg.tensorboard_dir,
        wandb_project=logging_cfg.wandb_project,
        total=config.train_steps,
        progress=logging_cfg.progress_bar,
        progress_keys=progress_keys,
        resume_step=resume_step,
    )


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and scheduler
# ----------------------------------------------------------------------------------------------------------------


def optimizer_settings(config: RecipeConfig) -> dict[str, Any]:
    """megatron ``OptimizerConfig`` fields for this run (Adam; fp32 main weights under bf16)."""
    o = config.optimizer
    return {
        "optimizer": "adam",
        "lr": o.lr,
        "min_lr": o.min_lr,
        "weight_decay": o.weight_decay,
        "adam_beta1": o.adam_beta1,
        "adam_beta2": o.adam_beta2,
        "adam_eps": o.adam_eps,
        "clip_grad": o.clip_grad,
        "bf16": o.bf16,
        "params_dtype": DTYPES[config.model.params_dtype],
        "use_distributed_optimizer": config.parallel.use_distributed_optimizer,
    }


def ddp_settings(config: RecipeConfig) -> dict[str, Any]:
    """megatron ``DistributedDataParallelConfig`` fields for this run."""
    return {
        "grad_reduce_in_fp32": True,
        "overlap_grad_reduce": False,
        "use_distributed_optimizer": config.parallel.use_distributed_optimizer,
    }


def build_optimizer(config: RecipeConfig, model: Any) -> tuple[Any, Any]:
    """Wrap ``model`` in megatron DDP and build megatron's optimizer over it.

    The model's config is set for the shared step (:mod:`nemotron_plugins.training.step`):
    ``calculate_per_token_loss`` (losses arrive normalised by the global batch; replicas' gradients are summed) and
    ``finalize_model_grads`` called by the step itself.

    Returns:
        ``(ddp_model, optimizer)``.
    """
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    mconfig = model.config
    mconfig.calculate_per_token_loss = True
    mconfig.finalize_model_grads_func = None
    if ps.get_pipeline_model_parallel_world_size() > 1:
        mconfig.pipeline_dtype = next(model.parameters()).dtype
    ddp = DistributedDataParallel(
        config=mconfig, ddp_config=DistributedDataParallelConfig(**ddp_settings(config)), module=model
    )
    settings = optimizer_settings(config)
    settings["params_dtype"] = getattr(torch, settings["params_dtype"])
    optimizer = get_megatron_optimizer(OptimizerConfig(**settings), [ddp])
    return ddp, optimizer


def total_optimizer_steps(config: RecipeConfig) -> int:
    """Optimizer steps of the whole run: ``train_steps`` (SFT) or ``train_steps`` x updates per rollout (RL)."""
    if config.is_rl and config.algorithm is not None:
        return config.train_steps * config.algorithm.updates_per_rollout(config.global_batch_size)
    return config.train_steps


def scheduler_settings(config: RecipeConfig) -> dict[str, Any]:
    """megatron ``OptimizerParamScheduler`` arguments: linear warmup from 0 over ``optimizer.warmup_steps``, then
    ``optimizer.lr_schedule`` to ``optimizer.min_lr`` at the run's last optimizer step; constant weight decay."""
    o = config.optimizer
    total = total_optimizer_steps(config)
    return {
        "init_lr": 0.0 if o.warmup_steps else o.lr,
        "max_lr": o.lr,
        "min_lr": o.min_lr,
        "lr_warmup_steps": o.warmup_steps,
        "lr_decay_steps": max(total, o.warmup_steps + 1),
        "lr_decay_style": o.lr_schedule,
        "start_wd": o.weight_decay,
        "end_wd": o.weight_decay,
        "wd_incr_steps": max(total, 1),
        "wd_incr_style": "constant",
    }


def build_scheduler(config: RecipeConfig, optimizer: Any) -> Any:
    """megatron's ``OptimizerParamScheduler`` for ``optimizer`` (see :func:`scheduler_settings`)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(optimizer, **scheduler_settings(config))
