"""Training checkpoints through megatron-core's distributed checkpointing (``dist_checkpointing``, ``torch_dist``).

One directory per step under a save root::

    save_root/
      latest                    text file naming the newest committed checkpoint ("iter_0000123")
      iter_0000123/
        checkpoint.json         step, saved layout (TP / PP / CP / DP), world size, package version, the caller's
                                ``config``; written last, before the rename; readable without torch
        metadata.json           megatron's dist_checkpointing marker (backend torch_dist)
        common.pt               rank 0's non-sharded state: scheduler, the caller's ``state``, optimizer groups
        __*.distcp, .metadata   torch_dist shards: model, optimizer (moments, fp32 main params), per-rank RNG

What is saved:

* **model**: ``sharded_state_dict()`` of every model chunk (DDP / Float16 wrappers are unwrapped through
  ``.module``), under ``model`` (one chunk) or ``model0``, ``model1``, ... (virtual pipeline chunks), as megatron-LM
  names them.
* **optimizer**: megatron's ``optimizer.sharded_state_dict(model_sharded_state_dict)``. For the distributed optimizer
  the sharding type is ``fully_reshardable``: at save the Adam moments and fp32 main params are gathered over the
  data-parallel group and reshaped to the model parameters' shapes (a regular optimizer's layout, sharded over TP /
  PP like the model), at load every rank reads the pieces of its parameters and keeps its DP slice, so a checkpoint
  loads at any TP / PP / DP. (In megatron-core 0.16 ``fully_sharded_model_space`` is refused, "flattened_range is
  not supported"; the ``dp_*`` formats reshard only over DP.) Two megatron-core 0.16 defects of that load with torch
  Adam (no TE / apex: every CPU run) are worked around here: a ``KeyError: 'step'`` and one step tensor shared by
  every parameter (see :func:`_torch_adam_step_passthrough`, :func:`_unshare_step_tensors`). A checkpoint of the
  distributed optimizer loads only into a distributed optimizer (and a plain one into a plain one): the error says
  so and how to proceed.
* **scheduler**: megatron ``OptimizerParamScheduler.state_dict()``.
* **state**: the caller's plain-Python dict (data / sampler position, metrics); rank 0's copy is saved.
* **rng**: Python, NumPy, torch (CPU, CUDA when present) and megatron's tensor-parallel RNG tracker states, one
  ``ShardedObject`` per global rank. At the layout that saved them they are restored exactly; at another layout
  they cannot be (other ranks, other TP seeds) and every RNG is re-seeded deterministically from the step
  (:data:`RESEED_BASE` + step) with a warning.

Saving is atomic (the directory mechanics of :mod:`nemotron_plugins.runtime.checkpoint`): every rank writes into a
hidden temporary directory, rank 0 writes ``checkpoint.json``, renames it into place and only then rewrites
``latest`` (fsync'd); re-saving an existing step keeps the old copy as a backup until the new one is in place;
``keep_last`` pruning runs after the commit; leftovers of an interrupted save are cleaned by the next save.

Resume at the same layout is bit-exact; at another layout the next-step loss equals the uninterrupted run's to
float rounding (``tests/functional/training/test_checkpoint_resume.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nemotron_plugins.runtime.checkpoint import (
    _TMP_PREFIX,
    CheckpointError,
    CheckpointNaming,
    commit_directory,
    crash_point,
    find_step_dir,
    fsync_dir,
    fsync_file,
    fsync_tree,
    get_rng_state,
    latest_step,
    prune_checkpoints,
    remove_stale,
    set_rng_state,
)
from nemotron_plugins.runtime.checkpoint import list_checkpoints as _list_steps
from nemotron_plugins.runtime.distributed import barrier

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "ITER_NAMING",
    "METADATA_FILE",
    "RESEED_BASE",
    "current_layout",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
]

CHECKPOINT_FORMAT_VERSION = 1
METADATA_FILE = "checkpoint.json"
ITER_NAMING = CheckpointNaming(prefix="iter_", digits=7, marker=METADATA_FILE)
"""``iter_0000123`` directories, complete once ``checkpoint.json`` is there (it is written last)."""
DISTRIB_OPTIM_SHARDING_TYPE = "fully_reshardable"
RESEED_BASE = 1234
"""Seed base when RNG states cannot be restored (another layout): every RNG is seeded with ``RESEED_BASE + step``."""
_RNG_KEY = "rng_state"


# ----------------------------------------------------------------------------------------------------------------
# Layout and metadata
# ----------------------------------------------------------------------------------------------------------------


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def current_layout() -> dict[str, int]:
    """This run's parallel layout: ``{"tp", "pp", "cp", "dp", "vpp", "world_size"}`` (all 1 without megatron's
    parallel state)."""
    from megatron.core import parallel_state as ps

    _, world = _rank_and_world()
    if not ps.model_parallel_is_initialized():
        return {"tp": 1, "pp": 1, "cp": 1, "dp": world, "vpp": 1, "world_size": world}
    return {
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "cp": ps.get_context_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(),
        "vpp": ps.get_virtual_pipeline_model_parallel_world_size() or 1,
        "world_size": world,
    }


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("nemotron-plugins")
    except Exception:  # noqa: BLE001 - an uninstalled source tree still saves
        return "unknown"


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``checkpoint.json`` of one checkpoint directory (plain JSON; no torch needed).

    Raises:
        CheckpointError: When the file is missing or not valid JSON, naming it.
    """
    meta_path = Path(path) / METADATA_FILE
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path} does not exist: {path} is not a complete checkpoint") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: not valid JSON (line {err.lineno})") from None


def list_checkpoints(save_root: str | os.PathLike[str]) -> list[int]:
    """Steps of the complete checkpoints under ``save_root``, ascending."""
    return _list_steps(save_root, ITER_NAMING)


def latest_checkpoint(save_root: str | os.PathLike[str]) -> int | None:
    """The newest committed complete checkpoint's step, or ``None`` when there is none.

    The ``latest`` pointer decides; when it is missing or names no complete checkpoint (e.g. a directory deleted by
    hand) the newest complete checkpoint is returned with a warning.
    """
    try:
        step = latest_step(save_root, ITER_NAMING)
    except CheckpointError as exc:
        step = None
        logger.warning("%s; falling back to the newest complete checkpoint", exc)
    if step is not None:
        return step
    steps = list_checkpoints(save_root)
    if steps and (Path(save_root) / "latest").exists():
        logger.warning("%s: using step %d, the newest complete checkpoint", save_root, steps[-1])
    return steps[-1] if steps else None


# ----------------------------------------------------------------------------------------------------------------
# Sharded state dicts
# ----------------------------------------------------------------------------------------------------------------


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The megatron module under DDP / Float16 wrappers (``.module`` chains)."""
    while hasattr(chunk, "module") and isinstance(chunk.module, torch.nn.Module):
        chunk = chunk.module
    return chunk


def _model_keys(model: list[torch.nn.Module]) -> list[str]:
    return ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]


def _model_sharded_state_dict(model: list[torch.nn.Module]) -> dict[str, Any]:
    out = {}
    for key, chunk in zip(_model_keys(model), model, strict=True):
        inner = _unwrap(chunk)
        if not hasattr(inner, "sharded_state_dict"):
            raise CheckpointError(
                f"model chunk {key} ({type(inner).__name__}) has no sharded_state_dict(); pass megatron-core modules "
                "(e.g. the GPTModel from build_puzzle_model, DDP-wrapped or not)"
            )
        out[key] = inner.sharded_state_dict()
    return out


def _optimizer_metadata() -> dict[str, Any]:
    return {"distrib_optim_sharding_type": DISTRIB_OPTIM_SHARDING_TYPE, "chained_optim_avoid_prefix": True}


def _flat_model_sharded(model_sd: dict[str, Any]) -> dict[str, Any]:
    """The model sharded state dict as the optimizer expects it (all chunks in one mapping)."""
    if len(model_sd) == 1:
        return next(iter(model_sd.values()))
    return model_sd


def _prime_optimizer_state(optimizer: Any) -> None:
    """Give a never-stepped distributed optimizer over torch Adam its (zero) state before a sharded state dict.

    megatron's ``DistributedOptimizer.state_dict()`` reads torch Adam's per-parameter ``step`` (without TE / apex)
    and fails on an optimizer that has not stepped yet, which is exactly the one a resume loads into. The state
    added here is what torch Adam creates lazily at its first step (``step`` 0, zero moments), so it changes nothing
    for a run that then steps, and a load overwrites it.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if not isinstance(sub, DistributedOptimizer) or not isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            continue
        if len(inner.state) > 0:
            continue
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


@contextlib.contextmanager
def _torch_adam_step_passthrough(optimizer: Any) -> Iterator[None]:
    """Let megatron-core 0.16's ``fully_reshardable`` load run over torch Adam (no TE / apex, e.g. on CPU).

    ``DistributedOptimizer.load_parameter_state_from_fully_reshardable`` drops ``step`` from the tensors it hands
    to ``_set_main_param_and_optimizer_states``, which then copies every key of the parameter's torch Adam state,
    ``step`` included, and fails with ``KeyError: 'step'`` (fused TE / apex Adam keep no per-parameter step). The
    step was already restored from the checkpoint's param groups by then, so for the duration of the load the
    parameter's own ``step`` is passed along (copied onto itself).
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    patched = []
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(sub, DistributedOptimizer) or "_set_main_param_and_optimizer_states" in vars(sub):
            continue
        original = sub._set_main_param_and_optimizer_states

        def set_states(model_param: Any, tensors: dict[str, Any], sub: Any = sub, original: Any = original) -> None:
            group_index, group_order = sub.model_param_group_index_map[model_param]
            main_param = sub.optimizer.param_groups[group_index]["params"][group_order]
            step = sub.optimizer.state.get(main_param, {}).get("step")
            if step is not None and "step" not in tensors:
                tensors = {**tensors, "step": step}
            original(model_param, tensors)

        sub._set_main_param_and_optimizer_states = set_states
        patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states


def _unshare_step_tensors(optimizer: Any) -> None:
    """Give every parameter its own torch Adam ``step`` tensor after a load.

    megatron-core 0.16's ``DistributedOptimizer.load_state_dict`` (torch Adam, no TE / apex) puts ONE step tensor
    into every parameter's state; torch Adam increments it in place once per parameter, so the next step would run
    with bias corrections for step ``saved + number of parameters``. Cloning restores independent counters.
    """
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            continue
        for state in inner.state.values():
            step = state.get("step") if isinstance(state, dict) else None
            if isinstance(step, torch.Tensor):
                state["step"] = step.clone()


def _is_distributed(optimizer: Any) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    subs = getattr(optimizer, "chained_optimizers", [optimizer]) if optimizer is not None else []
    return any(isinstance(sub, DistributedOptimizer) for sub in subs)


def _rng_sharded_object(rank: int, world: int, value: Any) -> Any:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(_RNG_KEY, value, (world,), (rank,), replica_id=0)


def _reseed(step: int) -> int:
    """Seed every RNG deterministically from ``step`` (megatron's tracker and the CPU/CUDA generators included)."""
    seed = RESEED_BASE + int(step)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return seed


# ----------------------------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------------------------


def save_checkpoint(
    save_root: str | os.PathLike[str],
    step: int,
    *,
    model: list[torch.nn.Module],
    optimizer: Any = None,
    scheduler: Any = None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = 2,
    config: dict[str, Any] | None = None,
) -> Path:
    """Save a training checkpoint of ``step`` atomically; every rank of the world must call it.

    Args:
        save_root: Directory holding the run's checkpoints (created when missing).
        step: Number of completed training steps.
        model: This rank's model chunks (megatron modules, DDP-wrapped or not).
        optimizer: megatron's optimizer (``get_megatron_optimizer``; distributed or not), or ``None``.
        scheduler: megatron's ``OptimizerParamScheduler`` (anything with ``state_dict()``), or ``None``.
        state: Plain-Python values to restore on resume (data / sampler position, metrics); rank 0's copy is saved,
            so it must describe the whole run, not one rank.
        keep_last: After committing, delete all but the newest ``keep_last`` checkpoints (``None`` keeps all).
        config: JSON-serialisable dict written into ``checkpoint.json`` (e.g. the run config), readable without
            torch.

    Returns:
        The committed ``iter_XXXXXXX`` directory.

    Raises:
        ValueError: ``keep_last`` < 1, ``step`` < 0 or an empty ``model`` list.
        CheckpointError: ``config`` / ``state`` cannot be serialised, or a rank failed; nothing was committed.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    if not model:
        raise ValueError("model must be a non-empty list of model chunks")
    rank, world = _rank_and_world()
    root = Path(save_root)
    name = ITER_NAMING.dir_name(step)
    tmp_dir = root / f"{_TMP_PREFIX}{name}"
    layout = current_layout()
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "format": "megatron dist_checkpointing torch_dist",
        "step": int(step),
        "layout": layout,
        "world_size": world,
        "num_model_chunks": len(model),
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "distributed_optimizer": _is_distributed(optimizer),
        "distrib_optim_sharding_type": DISTRIB_OPTIM_SHARDING_TYPE,
        "has_scheduler": scheduler is not None,
        "has_rng": True,
        "package_version": _package_version(),
        "config": config,
    }
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"save_checkpoint(config=...): not JSON-serialisable: {exc}") from None

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root, ITER_NAMING)
        tmp_dir.mkdir()
    barrier()

    model_sd = _model_sharded_state_dict(model)
    sharded: dict[str, Any] = dict(model_sd)
    if optimizer is not None:
        _prime_optimizer_state(optimizer)
        sharded["optimizer"] = optimizer.sharded_state_dict(
            _flat_model_sharded(model_sd), is_loading=False, metadata=_optimizer_metadata()
        )
    if scheduler is not None:
        sharded["scheduler"] = scheduler.state_dict()
    sharded["state"] = dict(state or {})
    sharded[_RNG_KEY] = _rng_sharded_object(rank, world, get_rng_state())
    dist_checkpointing.save(sharded, str(tmp_dir), sharded_strategy=get_default_save_sharded_strategy("torch_dist"))

    if rank == 0:
        fsync_tree(tmp_dir)
        crash_point("after_shards", step)
        meta_path = tmp_dir / METADATA_FILE
        meta_path.write_text(meta_text, encoding="utf-8")
        fsync_file(meta_path)
        fsync_dir(tmp_dir)
        final_dir = commit_directory(root, tmp_dir, step, ITER_NAMING)
        if keep_last is not None:
            crash_point("before_prune", step)
            prune_checkpoints(root, keep_last, ITER_NAMING)
        logger.info("saved checkpoint %s (layout %s)", final_dir, layout)
    barrier()
    return root / name


# ----------------------------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------------------------


def _resolve(load_root: Path, step: int | None) -> Path:
    """The checkpoint directory to load: ``load_root`` itself when it is one, else ``step`` / the latest under it."""
    if step is None and (load_root / METADATA_FILE).is_file():
        return load_root
    if step is None:
        step = latest_checkpoint(load_root)
        if step is None:
            raise CheckpointError(
                f"no complete checkpoint under {load_root} (no {ITER_NAMING.dir_name(0)[:5]}XXXXXXX directory with "
                f"{METADATA_FILE}); check the path or start without resuming"
            )
    found = find_step_dir(load_root, step, ITER_NAMING)
    if found is None:
        raise CheckpointError(
            f"{load_root / ITER_NAMING.dir_name(step)} is not a complete checkpoint; available steps: "
            f"{list_checkpoints(load_root)}"
        )
    return found


def load_checkpoint(
    load_root: str | os.PathLike[str],
    *,
    model: list[torch.nn.Module],
    optimizer: Any = None,
    scheduler: Any = None,
    step: int | None = None,
    load_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into this rank's model / optimizer / scheduler, at the
    saved layout or another one (TP / PP / DP resharding through megatron's sharded tensors).

    Build the model chunks, wrap them in DDP and build megatron's optimizer (and scheduler) BEFORE calling: the
    optimizer's state is loaded into its existing parameter shards. Every rank must call it.

    Args:
        load_root: A save root (loads ``step`` or the latest) or one ``iter_XXXXXXX`` directory.
        model: This rank's model chunks (same number of chunks as saved).
        optimizer: megatron's optimizer to restore (moments, fp32 main params, step counts), or ``None``. When the
            checkpoint holds no optimizer state, its main params are reloaded from the loaded model weights.
        scheduler: The ``OptimizerParamScheduler`` to restore, or ``None``.
        step: Which step; ``None`` loads the latest committed one.
        load_rng: Restore this rank's RNG states (same layout) or re-seed deterministically (another layout).

    Returns:
        ``{"step": int, "state": dict, "layout": {"tp", "pp", "cp", "dp", "vpp", "world_size"} as saved,
        "path": Path, "resharded": bool, "metadata": dict}``.

    Raises:
        CheckpointError: No checkpoint, an incomplete one, or one that does not fit (naming the file and field).
    """
    from megatron.core import dist_checkpointing

    if not model:
        raise ValueError("model must be a non-empty list of model chunks")
    path = _resolve(Path(load_root), step)
    meta = read_checkpoint_metadata(path)
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path / METADATA_FILE}: format_version {meta.get('format_version')!r} is not supported (expected "
            f"{CHECKPOINT_FORMAT_VERSION})"
        )
    if meta.get("num_model_chunks", 1) != len(model):
        raise CheckpointError(
            f"{path / METADATA_FILE}: num_model_chunks={meta.get('num_model_chunks')} but {len(model)} chunks were "
            "passed; resume with the same virtual pipeline size"
        )
    saved_layout = dict(meta["layout"])
    layout = current_layout()
    same_layout = all(saved_layout.get(k) == layout[k] for k in ("tp", "pp", "cp", "dp", "vpp", "world_size"))
    rank, world = _rank_and_world()

    model_sd = _model_sharded_state_dict(model)
    template: dict[str, Any] = dict(model_sd)
    have_optimizer = meta.get("optimizer") is not None
    if optimizer is not None and have_optimizer:
        saved_distributed = bool(meta.get("distributed_optimizer"))
        if saved_distributed != _is_distributed(optimizer):
            raise CheckpointError(
                f"{path / METADATA_FILE}: distributed_optimizer={saved_distributed} but this run's optimizer is "
                f"{'' if _is_distributed(optimizer) else 'not '}megatron's DistributedOptimizer; their optimizer "
                "states are stored differently: resume with the same parallel.use_distributed_optimizer, or load with "
                "optimizer=None and call optimizer.reload_model_params() (Adam moments then start from zero)"
            )
        _prime_optimizer_state(optimizer)
        template["optimizer"] = optimizer.sharded_state_dict(
            _flat_model_sharded(model_sd), is_loading=True, metadata=_optimizer_metadata()
        )
    restore_rng = load_rng and same_layout and meta.get("has_rng", False)
    if restore_rng:
        template[_RNG_KEY] = _rng_sharded_object(rank, world, None)
    loaded = dist_checkpointing.load(template, str(path))

    for key, chunk in zip(_model_keys(model), model, strict=True):
        if key not in loaded:
            raise CheckpointError(f"{path}: no '{key}' in the checkpoint (saved with {meta.get('num_model_chunks')})")
        _unwrap(chunk).load_state_dict(loaded[key], strict=True)
    if optimizer is not None:
        if have_optimizer:
            with _torch_adam_step_passthrough(optimizer):
                optimizer.load_state_dict(loaded["optimizer"])
            _unshare_step_tensors(optimizer)
        else:
            logger.warning("%s holds no optimizer state: main params reloaded from the model weights", path)
            optimizer.reload_model_params()
    if scheduler is not None:
        if "scheduler" not in loaded:
            raise CheckpointError(
                f"{path / METADATA_FILE}: has_scheduler=false; this checkpoint was saved without a scheduler (pass "
                "scheduler=None to load it)"
            )
        if hasattr(scheduler, "num_steps"):
            scheduler.num_steps = 0  # megatron's load_state_dict advances by the saved count from the current one
        scheduler.load_state_dict(loaded["scheduler"])
    if restore_rng:
        set_rng_state(loaded[_RNG_KEY])
    elif load_rng:
        seed = _reseed(int(meta["step"]))
        if rank == 0:
            logger.warning(
                "%s was saved at layout %s, this run is %s: RNG states cannot be restored per rank; every RNG is "
                "re-seeded with %d (RESEED_BASE + step)",
                path,
                {k: saved_layout.get(k) for k in ("tp", "pp", "cp", "dp")},
                {k: layout[k] for k in ("tp", "pp", "cp", "dp")},
                seed,
            )
    barrier()
    return {
        "step": int(meta["step"]),
        "state": dict(loaded.get("state") or {}),
        "layout": saved_layout,
        "path": path,
        "resharded": not same_layout,
        "metadata": meta,
    }
