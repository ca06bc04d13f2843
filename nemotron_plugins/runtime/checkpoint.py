"""Atomic training-state checkpoints that resume exactly.

A checkpoint is one directory per step under a save root::

    save_root/
      latest                  text file naming the newest complete checkpoint ("step_000123")
      step_000123/
        meta.json             step, world size, format version, file list (written last, by rank 0)
        rank_00000.pt         this rank's model / optimizer shards, scheduler, sampler, extra and RNG states
        rank_00001.pt         ...

Saving is crash-safe: every rank writes into a hidden temporary directory (``.tmp_step_000123``), the files are
flushed to disk, all ranks meet at a barrier, then rank 0 writes ``meta.json``, renames the temporary directory to
its final name with :func:`os.replace` and only then rewrites ``latest`` (itself through a temporary file and
:func:`os.replace`). A crash at any point before the rename leaves the previous checkpoint and ``latest`` untouched;
a leftover temporary directory is ignored by readers and removed by the next save.

Exact resume: each rank's file also holds the Python, NumPy and torch RNG states (CPU, CUDA when present, and
megatron-core's tensor-parallel RNG tracker when it is initialised). :func:`load_training_state` restores them by
default, so a run that is killed and resumed draws the same random numbers (dropout masks, data order) as one that
never stopped.

Plain :func:`torch.save` is used; files are read back with ``weights_only=True`` unless asked otherwise, so a
checkpoint can hold tensors, numbers, strings, lists, tuples and dicts (what model, optimizer, scheduler and sampler
state dicts contain).

The directory mechanics (temporary directory, rename into place, a backup while a step is re-saved, the ``latest``
pointer, retention, crash points for tests) are generic over a :class:`CheckpointNaming`; the distributed
(megatron ``dist_checkpointing``) checkpoints of :mod:`nemotron_plugins.training.checkpointing` use the same
functions with ``iter_XXXXXXX`` directories.

Re-saving a step that exists never leaves a moment without a complete copy: the new copy is written in full first,
then the old directory is renamed to ``<name>.prev``, the new one renamed into place, and only then is the backup
deleted. Readers (:func:`find_step_dir`, :func:`list_checkpoints`, :func:`latest_step`) fall back to ``<name>.prev``
when ``<name>`` is missing, and the next save renames such a backup back into place.

Crash points for tests: with the environment variable ``NEMOTRON_CHECKPOINT_CRASH_AT`` set to one of
:data:`CRASH_POINTS` (optionally ``"<point>:<step>"``), rank 0 kills its own process with ``SIGKILL`` when a save
reaches that point, so tests can prove that every instant of a save leaves a loadable checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nemotron_plugins.runtime.distributed import barrier

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST_FILE = "latest"
META_FILE = "meta.json"
_STEP_DIR_RE = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp_"
BACKUP_SUFFIX = ".prev"
CRASH_ENV = "NEMOTRON_CHECKPOINT_CRASH_AT"
CRASH_POINTS = ("after_shards", "before_rename", "between_renames", "before_latest", "before_prune")
"""Where a save can be made to kill itself (see the module docstring): after every rank wrote its files, before the
temporary directory is renamed into place, between the two renames of a re-save, before ``latest`` moves, and
before older checkpoints are pruned."""


@dataclass(frozen=True, slots=True)
class CheckpointNaming:
    """How one kind of checkpoint names its step directories and which file marks a directory complete."""

    prefix: str
    """Directory name prefix (``"step_"``)."""
    digits: int
    """Zero-padded width of the step number."""
    marker: str
    """File whose presence makes a directory a complete checkpoint (written last, before the rename)."""

    def dir_name(self, step: int) -> str:
        """Directory name of ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return f"{self.prefix}{step:0{self.digits}d}"

    def parse(self, name: str) -> int | None:
        """The step of a directory name (``None`` if it is not one of ours; backups are not parsed)."""
        match = re.fullmatch(re.escape(self.prefix) + r"(\d+)", name)
        return int(match.group(1)) if match else None


STEP_NAMING = CheckpointNaming(prefix="step_", digits=6, marker=META_FILE)
"""The per-rank ``torch.save`` checkpoints of this module."""


def crash_point(point: str, step: int) -> None:
    """Kill this process (SIGKILL) if ``NEMOTRON_CHECKPOINT_CRASH_AT`` names ``point`` (and ``step``, if given).

    Only for tests of crash safety; a no-op when the variable is unset.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, at_step = wanted.partition(":")
    if name not in CRASH_POINTS:
        raise ValueError(f"{CRASH_ENV}={wanted!r}: the point must be one of {CRASH_POINTS} (optionally ':<step>')")
    if name == point and (not at_step or int(at_step) == step):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the current run."""


@dataclass(kw_only=True, slots=True)
class TrainingState:
    """Everything :func:`load_training_state` returns for this rank."""

    step: int
    """Training step the checkpoint was taken at (the number of completed steps)."""
    path: Path
    """The ``step_XXXXXX`` directory that was loaded."""
    model_state: Any = None
    """This rank's model state dict (or shard of it)."""
    optimizer_state: Any = None
    """This rank's optimizer state dict (or shard of it)."""
    scheduler_state: Any = None
    """Learning-rate scheduler state."""
    sampler_state: Any = None
    """Data position: sampler / data-iterator state."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form extra values saved by the caller (config echo, metrics, ...)."""
    rng_state: dict[str, Any] | None = None
    """The RNG states that were saved (already restored when ``restore_rng=True``)."""
    world_size: int = 1
    """World size of the run that wrote the checkpoint."""


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------------------------


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank_and_world() -> tuple[int, int]:
    if _dist_active():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _broadcast_ok(ok: bool) -> bool:
    """All ranks agree whether every rank succeeded (so no rank commits a partial checkpoint)."""
    if not _dist_active():
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


# ----------------------------------------------------------------------------------------------------------------
# RNG capture / restore
# ----------------------------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Capture the Python, NumPy and torch RNG states of this process.

    Returns:
        A dict with ``python``, ``numpy``, ``torch_cpu`` and, when present, ``torch_cuda`` (one state per visible
        device) and ``megatron_tracker`` (megatron-core's named tensor-parallel RNG states). Only plain types and
        tensors, so it saves and loads with ``weights_only=True``.
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    tracker = _megatron_rng_tracker()
    if tracker is not None:
        state["megatron_tracker"] = {name: s.clone() for name, s in tracker.get_states().items()}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`get_rng_state`.

    Args:
        state: The dict from :func:`get_rng_state`.

    Raises:
        CheckpointError: CUDA states were saved for more devices than are visible now.
    """
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys.numpy(), dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch_cpu"])
    cuda_states = state.get("torch_cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) > torch.cuda.device_count():
            raise CheckpointError(
                f"checkpoint holds CUDA RNG states for {len(cuda_states)} devices but only "
                f"{torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    tracker_states = state.get("megatron_tracker")
    if tracker_states:
        tracker = _megatron_rng_tracker(require_initialized=False)
        if tracker is not None:
            tracker.set_states(tracker_states)


def _megatron_rng_tracker(require_initialized: bool = True) -> Any | None:
    """Megatron's tensor-parallel RNG tracker, only if megatron-core is already imported (never import it here)."""
    module = sys.modules.get("megatron.core.tensor_parallel.random")
    if module is None:
        return None
    try:
        tracker = module.get_cuda_rng_tracker()
        if require_initialized and not tracker.is_initialized():
            return None
        return tracker
    except Exception:  # noqa: BLE001 - a tracker we cannot read is simply not captured
        return None


# ----------------------------------------------------------------------------------------------------------------
# File-system helpers
# ----------------------------------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint for ``step`` (``step_000123``)."""
    return STEP_NAMING.dir_name(step)


def rank_file_name(rank: int) -> str:
    """File name of one rank's shard (``rank_00000.pt``)."""
    return f"rank_{rank:05d}.pt"


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush one file's data to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (renames, new files) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):  # not every platform / file system allows opening a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """:func:`fsync_file` every file under ``path`` and :func:`fsync_dir` every directory (deepest first)."""
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and :func:`os.replace`: readers see the old or the
    new content, never a partial file."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


_fsync_file = fsync_file
_fsync_dir = fsync_dir
_atomic_write_text = atomic_write_text


def find_step_dir(save_root: str | os.PathLike[str], step: int, naming: CheckpointNaming = STEP_NAMING) -> Path | None:
    """The complete directory holding ``step``: ``<name>`` or, while a re-save of that step was interrupted, its
    backup ``<name>.prev``; ``None`` when neither is complete."""
    root = Path(save_root)
    name = naming.dir_name(step)
    for candidate in (root / name, root / f"{name}{BACKUP_SUFFIX}"):
        if candidate.is_dir() and (candidate / naming.marker).is_file():
            return candidate
    return None


def list_checkpoints(save_root: str | os.PathLike[str], naming: CheckpointNaming = STEP_NAMING) -> list[int]:
    """Steps of the complete checkpoints under ``save_root`` (those with their marker file), ascending."""
    root = Path(save_root)
    if not root.is_dir():
        return []
    steps = set()
    for child in root.iterdir():
        name = child.name.removesuffix(BACKUP_SUFFIX)
        step = naming.parse(name)
        if step is not None and find_step_dir(root, step, naming) is not None:
            steps.add(step)
    return sorted(steps)


def latest_step(save_root: str | os.PathLike[str], naming: CheckpointNaming = STEP_NAMING) -> int | None:
    """The step named by the ``latest`` pointer, or ``None`` when there is no checkpoint yet.

    Raises:
        CheckpointError: ``latest`` names a directory that is missing or incomplete.
    """
    root = Path(save_root)
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    step = naming.parse(name)
    if step is None:
        raise CheckpointError(f"{pointer}: expected a name like {naming.dir_name(123)!r}, found {name!r}")
    if find_step_dir(root, step, naming) is None:
        raise CheckpointError(f"{pointer} names {name!r} but {root / name / naming.marker} does not exist")
    return step


def remove_stale(save_root: str | os.PathLike[str], naming: CheckpointNaming = STEP_NAMING) -> None:
    """Clean what an interrupted save left: delete hidden temporary entries (``.tmp_*``) and settle backups of an
    interrupted re-save (``<name>.prev``): put it back when ``<name>`` is missing or incomplete, else delete it."""
    root = Path(save_root)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.name.startswith(_TMP_PREFIX):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        elif child.name.endswith(BACKUP_SUFFIX) and naming.parse(child.name.removesuffix(BACKUP_SUFFIX)) is not None:
            final = root / child.name.removesuffix(BACKUP_SUFFIX)
            if (final / naming.marker).is_file() or not (child / naming.marker).is_file():
                _delete_dir(root, child)
            else:
                if final.exists():
                    _delete_dir(root, final)
                os.replace(child, final)
                fsync_dir(root)


def _delete_dir(root: Path, victim: Path) -> None:
    """Rename ``victim`` to a hidden name first, then delete: a crash mid-delete never leaves a half-deleted
    directory under a name readers look at."""
    trash = root / f"{_TMP_PREFIX}del_{victim.name}.{os.getpid()}"
    os.replace(victim, trash)
    shutil.rmtree(trash, ignore_errors=True)


def commit_directory(
    save_root: str | os.PathLike[str],
    tmp_dir: str | os.PathLike[str],
    step: int,
    naming: CheckpointNaming = STEP_NAMING,
) -> Path:
    """Move a fully written (marker included) temporary directory into place as ``step`` and point ``latest`` at it.

    At every instant a complete copy of the newest committed step exists: a new step is one rename; re-saving an
    existing step renames the old copy to ``<name>.prev``, the new one into place, moves ``latest`` and only then
    deletes the backup. Call on one process (rank 0) after every rank has written its files.

    Returns:
        The committed directory.

    Raises:
        CheckpointError: ``tmp_dir`` lacks the marker file.
    """
    root, tmp_dir = Path(save_root), Path(tmp_dir)
    if not (tmp_dir / naming.marker).is_file():
        raise CheckpointError(f"{tmp_dir}: {naming.marker} is missing; nothing was committed")
    final_dir = root / naming.dir_name(step)
    backup = root / f"{final_dir.name}{BACKUP_SUFFIX}"
    crash_point("before_rename", step)
    if final_dir.exists():
        if backup.exists():
            _delete_dir(root, backup)
        os.replace(final_dir, backup)
        fsync_dir(root)
        crash_point("between_renames", step)
        os.replace(tmp_dir, final_dir)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(root)
    crash_point("before_latest", step)
    atomic_write_text(root / LATEST_FILE, final_dir.name + "\n")
    if backup.exists():
        _delete_dir(root, backup)
    return final_dir


def prune_checkpoints(
    save_root: str | os.PathLike[str], keep_last: int, naming: CheckpointNaming = STEP_NAMING
) -> list[int]:
    """Delete all but the newest ``keep_last`` complete checkpoints; never deletes the one ``latest`` names.

    Args:
        save_root: Directory holding the checkpoints.
        keep_last: How many to keep (>= 1).
        naming: Which kind of checkpoint directories.

    Returns:
        The steps that were deleted.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(save_root)
    steps = list_checkpoints(root, naming)
    protected = latest_step(root, naming)
    doomed = [s for s in steps[:-keep_last] if s != protected]
    for s in doomed:
        for victim in (root / naming.dir_name(s), root / f"{naming.dir_name(s)}{BACKUP_SUFFIX}"):
            if victim.exists():
                _delete_dir(root, victim)
    return doomed


# ----------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------


def save_training_state(
    save_root: str | os.PathLike[str],
    *,
    step: int,
    model_state: Any = None,
    optimizer_state: Any = None,
    scheduler_state: Any = None,
    sampler_state: Any = None,
    extra: dict[str, Any] | None = None,
    rng: bool = True,
    keep_last: int | None = None,
) -> Path:
    """Save one training step's state atomically; with torch.distributed active, every rank must call it.

    Each rank writes ``rank_XXXXX.pt`` with its own model / optimizer shards, the scheduler, sampler and extra
    values and (with ``rng=True``) its RNG states. Rank 0 commits the checkpoint after all ranks have written.

    Args:
        save_root: Directory holding all checkpoints of the run (created when missing).
        step: Number of completed training steps.
        model_state: This rank's model state dict.
        optimizer_state: This rank's optimizer state dict.
        scheduler_state: Learning-rate scheduler state dict.
        sampler_state: Data position (sampler / iterator state).
        extra: Further values to store (must be picklable with plain types and tensors).
        rng: Capture this process's RNG states.
        keep_last: After committing, delete all but the newest ``keep_last`` checkpoints (``None`` keeps all).

    Returns:
        The committed ``step_XXXXXX`` directory.

    Raises:
        CheckpointError: Some rank failed to write its file; nothing was committed.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    rank, world_size = _rank_and_world()
    root = Path(save_root)
    final_dir = root / step_dir_name(step)
    tmp_dir = root / f"{_TMP_PREFIX}{step_dir_name(step)}"

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp_dirs(root)
        tmp_dir.mkdir()
    barrier()

    payload = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "rank": rank,
        "world_size": world_size,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "sampler": sampler_state,
        "extra": dict(extra or {}),
        "rng": get_rng_state() if rng else None,
    }
    rank_path = tmp_dir / rank_file_name(rank)
    ok = True
    error: BaseException | None = None
    try:
        torch.save(payload, rank_path)
        _fsync_file(rank_path)
    except Exception as exc:  # noqa: BLE001 - reported below after all ranks agree
        ok, error = False, exc
    if not _broadcast_ok(ok):
        if rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        barrier()
        if error is not None:
            raise error
        raise CheckpointError(f"another rank failed to write its shard of {final_dir}; nothing was committed")

    if rank == 0:
        crash_point("after_shards", step)
        try:
            _commit(root, tmp_dir, final_dir, step=step, world_size=world_size)
            if keep_last is not None:
                crash_point("before_prune", step)
                prune_checkpoints(root, keep_last)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # no-op after a successful rename
    barrier()
    return final_dir


def _commit(root: Path, tmp_dir: Path, final_dir: Path, *, step: int, world_size: int) -> None:
    """Rank 0: write meta.json, then :func:`commit_directory` (rename into place, then move ``latest``)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "world_size": world_size,
        "files": [rank_file_name(r) for r in range(world_size)],
        "saved_at": time.time(),
    }
    missing = [name for name in meta["files"] if not (tmp_dir / name).is_file()]
    if missing:
        raise CheckpointError(f"{tmp_dir}: rank files {missing} are missing; nothing was committed")
    meta_path = tmp_dir / META_FILE
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    fsync_file(meta_path)
    fsync_dir(tmp_dir)
    commit_directory(root, tmp_dir, step, STEP_NAMING)


def _remove_stale_tmp_dirs(root: Path) -> None:
    remove_stale(root, STEP_NAMING)


def load_training_state(
    save_root: str | os.PathLike[str],
    *,
    step: int | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device | None = "cpu",
    weights_only: bool = True,
) -> TrainingState:
    """Load this rank's training state from ``save_root``.

    Args:
        save_root: Directory holding the checkpoints (as given to :func:`save_training_state`), or one
            ``step_XXXXXX`` directory itself.
        step: Which step to load; ``None`` loads the one ``latest`` names.
        restore_rng: Restore the saved RNG states into this process.
        map_location: Passed to :func:`torch.load`.
        weights_only: Passed to :func:`torch.load`; set ``False`` only for checkpoints you wrote that hold
            arbitrary Python objects.

    Returns:
        The loaded :class:`TrainingState`.

    Raises:
        CheckpointError: No checkpoint, an incomplete one, or one written with a different world size.
    """
    path = Path(save_root)
    if _STEP_DIR_RE.match(path.name) and (path / META_FILE).is_file() and step is None:
        ckpt_dir = path
    else:
        if step is None:
            step = latest_step(path)
            if step is None:
                raise CheckpointError(f"no checkpoint under {path} (no '{LATEST_FILE}' file)")
        ckpt_dir = find_step_dir(path, step) or path / step_dir_name(step)
    meta_path = ckpt_dir / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint ({META_FILE} missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format_version {meta.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    rank, world_size = _rank_and_world()
    if meta["world_size"] != world_size:
        raise CheckpointError(
            f"{ckpt_dir} was written by {meta['world_size']} ranks but this run has {world_size}; "
            "resume with the same parallel layout"
        )
    rank_path = ckpt_dir / rank_file_name(rank)
    if not rank_path.is_file():
        raise CheckpointError(f"{rank_path} is missing")
    payload = torch.load(rank_path, map_location=map_location, weights_only=weights_only)
    if payload.get("step") != meta["step"]:
        raise CheckpointError(f"{rank_path}: step {payload.get('step')} does not match {meta_path} ({meta['step']})")
    if restore_rng and payload.get("rng") is not None:
        set_rng_state(payload["rng"])
    return TrainingState(
        step=int(meta["step"]),
        path=ckpt_dir,
        model_state=payload.get("model"),
        optimizer_state=payload.get("optimizer"),
        scheduler_state=payload.get("scheduler"),
        sampler_state=payload.get("sampler"),
        extra=payload.get("extra") or {},
        rng_state=payload.get("rng"),
        world_size=int(meta["world_size"]),
    )


class CheckpointManager:
    """Periodic atomic checkpoints of one run with retention.

    Example:
        >>> mgr = CheckpointManager(save_dir, keep_last=2)  # doctest: +SKIP
        >>> if mgr.latest() is not None:  # doctest: +SKIP
        ...     state = mgr.load()
        >>> mgr.save(step, model_state=model.state_dict(), optimizer_state=opt.state_dict())  # doctest: +SKIP
    """

    def __init__(self, save_dir: str | os.PathLike[str], *, keep_last: int | None = 2) -> None:
        """Create a manager.

        Args:
            save_dir: Directory holding this run's checkpoints.
            keep_last: Checkpoints to keep after each save (``None`` keeps all).
        """
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.save_dir = Path(save_dir)
        self.keep_last = keep_last

    def save(self, step: int, **state: Any) -> Path:
        """Save a checkpoint; keyword arguments are those of :func:`save_training_state`."""
        return save_training_state(self.save_dir, step=step, keep_last=self.keep_last, **state)

    def latest(self) -> int | None:
        """Step of the newest complete checkpoint, or ``None``."""
        return latest_step(self.save_dir)

    def steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return list_checkpoints(self.save_dir)

    def load(self, step: int | None = None, **kwargs: Any) -> TrainingState:
        """Load a checkpoint (the latest by default); keyword arguments are those of :func:`load_training_state`."""
        return load_training_state(self.save_dir, step=step, **kwargs)
