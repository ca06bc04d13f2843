"""Weight refit: the Megatron policy's TP / PP shards streamed as Hugging Face tensors in bounded buckets.

A generation engine (vLLM, or any HF-layout consumer) holds the policy in the layout of the HF checkpoint the
trainer exported once (:func:`~nemotron_plugins.puzzle.hf_checkpoint.export_hf_checkpoint`). After every update it
needs the new weights under the same names and shapes. :func:`stream_hf_weights` produces them:

* **one mapping**: the Megatron <-> HF plan of :mod:`nemotron_plugins.puzzle.hf_checkpoint` (fused QKV split per
  layer's KV heads, ``linear_fc1`` split into gate / up, linear replacements, no-op sub-blocks without weights,
  vocabulary padding dropped), and SwiGLU widths zero-padded exactly as the export writes them
  (:attr:`~nemotron_plugins.puzzle.hf_checkpoint.HFExportLayout.ffn_padding`), so the stream is bitwise the tensors
  of the exported checkpoint;
* **every pipeline stage**: it is a collective over the model-parallel (TP x PP) group of one data-parallel
  replica. Within the stage that owns a tensor its TP shards are all-gathered; the owning stage then broadcasts the
  HF tensor over the pipeline group, so every rank of every stage yields every tensor of the model;
* **bounded memory**: tensors are yielded in buckets of at most ``bucket_bytes`` (a single tensor larger than that
  forms a bucket of its own). The generator keeps no reference to a bucket once it has been handed out, so a
  consumer that loads and drops each bucket holds one bucket (plus the conversion of one Megatron tensor) at a time,
  never a whole stage;
* **TP engines**: with ``tp_shard=(rank, size)`` each rank yields only its slice of each HF tensor for an engine at
  tensor parallelism ``size`` (column-parallel rows, row-parallel columns, vocabulary rows, norms whole). When every
  rank of a pipeline group asks for the same slice, only that slice crosses the pipeline group.

Every rank of the model-parallel group must iterate the stream to the end (it issues collectives); the order of
buckets and of tensors in them is the same on every rank (the canonical file order of the export).

Example (the trainer, after an update; ``engine`` loads one bucket at a time)::

    for bucket in stream_hf_weights(model, config=model_config, bucket_bytes=512 << 20, dtype=torch.bfloat16):
        engine.load_bucket(bucket)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
from nemotron_plugins.puzzle.hf_checkpoint import (
    _DTYPES,
    HFCheckpointError,
    TensorPlan,
    _chunk_plans,
    _meta,
    _order_key,
    expected_hf_tensors,
    hf_export_layout,
    megatron_to_hf_tensors,
    pad_ffn_for_export,
)
from nemotron_plugins.puzzle.model import unwrap_model

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "RefitGroups",
    "RefitPlan",
    "RefitUnit",
    "hf_tp_slice",
    "plan_refit",
    "stream_hf_weights",
]

DEFAULT_BUCKET_BYTES = 512 << 20
"""Default bucket size (512 MiB)."""

# HF tensors of each TensorPlan kind are split for a TP engine along this dimension (None: replicated).
_TP_DIM: dict[str, int | None] = {
    "replicated": None,
    "column": 0,
    "qkv": 0,
    "fc1": 0,
    "vocab": 0,
    "row": 1,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class RefitGroups:
    """The model-parallel layout the stream runs over (``None`` groups: no collective of that kind)."""

    tp_rank: int = 0
    """Training tensor-parallel rank."""
    tp_size: int = 1
    """Training tensor-parallel size."""
    tp_group: Any = None
    """Training tensor-parallel process group."""
    pp_rank: int = 0
    """Pipeline stage of this rank."""
    pp_size: int = 1
    """Pipeline stages."""
    pp_group: Any = None
    """Pipeline process group (the ranks of every stage that share this rank's TP rank)."""
    pp_global_ranks: tuple[int, ...] = (0,)
    """Global rank of each stage's member of ``pp_group``, by stage."""

    @classmethod
    def from_megatron(cls) -> RefitGroups:
        """Read the groups from megatron-core's ``parallel_state`` (single process when it is not initialised)."""
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            return cls()
        pp_size = ps.get_pipeline_model_parallel_world_size()
        pp_group = ps.get_pipeline_model_parallel_group()
        ranks = (
            tuple(torch.distributed.get_process_group_ranks(pp_group))
            if pp_size > 1
            else (torch.distributed.get_rank(),)
        )
        return cls(
            tp_rank=ps.get_tensor_model_parallel_rank(),
            tp_size=ps.get_tensor_model_parallel_world_size(),
            tp_group=ps.get_tensor_model_parallel_group(),
            pp_rank=ps.get_pipeline_model_parallel_rank(),
            pp_size=pp_size,
            pp_group=pp_group,
            pp_global_ranks=ranks,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RefitUnit:
    """The HF tensors made from one Megatron tensor: the stream's indivisible step."""

    names: tuple[str, ...]
    """HF names: q / k / v of a fused QKV, else one name (gate and up of ``linear_fc1`` are separate units)."""
    shapes: tuple[tuple[int, ...], ...]
    """Shape of each yielded tensor (FFN widths as exported, the ``tp_shard`` slice when one is asked for)."""
    full_shapes: tuple[tuple[int, ...], ...]
    """Shape of each whole HF tensor as exported."""
    dtype: torch.dtype
    """Dtype of the yielded tensors."""
    tp_dim: int | None
    """Dimension a TP engine splits these tensors along (``None``: replicated)."""
    stage: int
    """Pipeline stage that owns the Megatron tensor."""
    order: tuple[int, int, int, int]
    """Position in the canonical (export file) order: ``(layer + 1 or 0 / last, sub-position, index in chunk, part)``."""

    @property
    def nbytes(self) -> int:
        """Bytes of the yielded tensors."""
        return sum(_numel(s) for s in self.shapes) * self.dtype.itemsize


@dataclass(frozen=True, kw_only=True, slots=True)
class RefitPlan:
    """What one rank's stream yields, bucket by bucket (identical order and names on every rank)."""

    buckets: tuple[tuple[RefitUnit, ...], ...]
    """Units of each bucket, in stream order."""
    bucket_bytes: int
    """The requested bucket size."""
    tp_shard: tuple[int, int] | None
    """This rank's engine TP slice, or ``None`` for whole tensors."""

    @property
    def names(self) -> list[str]:
        """Every HF name of the stream, in order."""
        return [n for bucket in self.buckets for unit in bucket for n in unit.names]

    @property
    def bucket_nbytes(self) -> list[int]:
        """Bytes of each bucket."""
        return [sum(u.nbytes for u in bucket) for bucket in self.buckets]

    @property
    def max_bucket_nbytes(self) -> int:
        """The memory bound of the stream's output: ``max(bucket_bytes, largest unit)``, never more."""
        return max(self.bucket_nbytes, default=0)

    @property
    def total_nbytes(self) -> int:
        """Bytes of the whole stream."""
        return sum(self.bucket_nbytes)


def hf_tp_slice(tensor: torch.Tensor, dim: int | None, rank: int, size: int, *, name: str = "tensor") -> torch.Tensor:
    """The slice of an HF tensor that TP rank ``rank`` of ``size`` holds (a view; the whole tensor when ``dim`` is
    ``None`` or ``size`` is 1).

    Vocabulary-sized tensors (``model.embed_tokens`` / ``lm_head``) are split in ``ceil(rows / size)``-row blocks, the
    last rank taking what is left; every other tensor must divide evenly.

    Raises:
        HFCheckpointError: ``tensor.shape[dim]`` is not divisible by ``size`` (naming the tensor).
    """
    if dim is None or size == 1:
        return tensor
    rows = tensor.shape[dim]
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        per = -(-rows // size)
        start = min(rank * per, rows)
        return tensor.narrow(dim, start, min(rows, start + per) - start)
    if rows % size:
        raise HFCheckpointError(
            f"{name}: dimension {dim} of size {rows} cannot be split over an engine at TP={size} (need a multiple)"
        )
    part = rows // size
    return tensor.narrow(dim, rank * part, part)


def _slice_shape(shape: tuple[int, ...], dim: int | None, name: str, tp_shard: tuple[int, int] | None):
    if tp_shard is None:
        return shape
    return tuple(hf_tp_slice(torch.empty(shape, device="meta"), dim, *tp_shard, name=name).shape)


def _check_args(bucket_bytes: Any, tp_shard: Any, dtype: Any) -> torch.dtype | None:
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be a positive integer (bytes), got {bucket_bytes!r}")
    if tp_shard is not None:
        ok = (
            isinstance(tp_shard, (tuple, list))
            and len(tp_shard) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in tp_shard)
            and 0 <= tp_shard[0] < tp_shard[1]
        )
        if not ok:
            raise ValueError(f"tp_shard must be (rank, size) with 0 <= rank < size, got {tp_shard!r}")
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if f"torch.{name}" not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(k.removeprefix('torch.') for k in _DTYPES)}")
        return _DTYPES[f"torch.{name}"]
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, a dtype name or None, got {dtype!r}")
    return dtype


def _unit_parts(plan: TensorPlan) -> list[tuple[str, ...]]:
    """The stream's units of one Megatron tensor: SwiGLU ``linear_fc1`` (each TP shard ``[gate shard; up shard]``, as
    :func:`~nemotron_plugins.puzzle.hf_checkpoint.fc1_from_megatron` splits it) streams gate and up separately, so
    only one of the two (the largest tensors of a wide FFN) is gathered and held at a time; every other tensor is one
    unit (q / k / v of a fused QKV together)."""
    return [(n,) for n in plan.hf_names] if plan.kind == "fc1" else [plan.hf_names]


def _local_units(
    chunks: Sequence[tuple[list[TensorPlan], dict[str, torch.Tensor]]],
    cfg: PuzzleModelConfig,
    tp_size: int,
    dtype: torch.dtype | None,
    export_shapes: dict[str, tuple[int, ...]],
) -> tuple[
    list[tuple[tuple[int, int, int, int], tuple[str, ...], tuple[tuple[int, ...], ...], str, int | None]], list[str]
]:
    """What this rank's stage owns: ``(order, names, exported shapes, dtype name, tp dim)`` per Megatron tensor, and
    the tensors whose shapes do not match ``cfg`` (checked on meta tensors, before any data moves)."""
    trained = expected_hf_tensors(cfg)
    out, errors = [], []
    for plans, state in chunks:
        for index, plan in enumerate(plans):
            if not plan.export:
                continue
            local = state[plan.megatron_name]
            try:
                metas = megatron_to_hf_tensors(
                    plan, [_meta(local)] * (1 if plan.kind == "replicated" else tp_size), cfg
                )
                bad = [
                    f"{n} {tuple(t.shape)} vs {trained[n]}" for n, t in metas.items() if tuple(t.shape) != trained[n]
                ]
            except HFCheckpointError as err:
                bad = [str(err)]
            if bad:
                errors.append(f"{plan.megatron_name} ({plan.where()}): " + "; ".join(bad))
            out_dtype = dtype if dtype is not None else local.dtype
            for part, names in enumerate(_unit_parts(plan)):
                shapes = tuple(export_shapes[n] for n in names)
                out.append(((*_order_key(plan, cfg), index, part), names, shapes, str(out_dtype), _TP_DIM[plan.kind]))
    return out, errors


def _all_gather_object(obj: Any, groups: RefitGroups) -> list[Any]:
    if groups.pp_size == 1:
        return [obj]
    gathered: list[Any] = [None] * groups.pp_size
    torch.distributed.all_gather_object(gathered, obj, group=groups.pp_group)
    return gathered


def plan_refit(
    model: Any,
    *,
    config: PuzzleModelConfig,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    tp_shard: tuple[int, int] | None = None,
    dtype: torch.dtype | str | None = None,
    groups: RefitGroups | None = None,
    export_widths: bool = True,
) -> RefitPlan:
    """The buckets :func:`stream_hf_weights` will yield on this rank (a collective over the pipeline group).

    Args: as :func:`stream_hf_weights`.

    Returns:
        The plan; its :attr:`RefitPlan.max_bucket_nbytes` bounds every bucket.

    Raises:
        HFCheckpointError: the stages together do not hold every tensor of ``config`` (named), or a tensor cannot
            be split for ``tp_shard``.
    """
    return _plan(model, config, bucket_bytes, tp_shard, dtype, groups, export_widths)[0]


def _plan(
    model: Any,
    cfg: PuzzleModelConfig,
    bucket_bytes: int,
    tp_shard: tuple[int, int] | None,
    dtype: torch.dtype | str | None,
    groups: RefitGroups | None,
    export_widths: bool = True,
) -> tuple[RefitPlan, list, dict[int, tuple[int, int]], RefitGroups, bool]:
    dtype = _check_args(bucket_bytes, tp_shard, dtype)
    tp_shard = tuple(tp_shard) if tp_shard is not None else None
    groups = groups or RefitGroups.from_megatron()
    models = [model] if isinstance(model, torch.nn.Module) else list(model)
    chunks = [_chunk_plans(unwrap_model(m), cfg) for m in models]
    # The export's SwiGLU widths (zero-padded, what an engine loaded from the export holds) or the trained ones.
    layout = hf_export_layout(cfg)
    padding = layout.ffn_padding if export_widths else {}
    export_shapes = expected_hf_tensors(layout.export_cfg if export_widths else cfg)
    entries, errors = _local_units(chunks, cfg, groups.tp_size, dtype, export_shapes)
    offers = _all_gather_object((entries, errors, tp_shard), groups)
    errors = [f"stage {stage}: {e}" for stage, (_, errs, _) in enumerate(offers) for e in errs]
    if errors:  # raised on every rank of the pipeline group, before any tensor moves
        raise HFCheckpointError(
            "the model does not match the config (HF shape from the model vs the config's): " + " | ".join(errors[:10])
        )
    # The whole pipeline group wants the same slice: the owner slices before broadcasting.
    same_slice = all(shard == tp_shard for _, _, shard in offers)
    units: dict[tuple[str, ...], RefitUnit] = {}
    for stage, (entries, _, _) in enumerate(offers):
        for order, names, shapes, dtype_name, dim in entries:
            if names in units:
                continue  # not expected: each Megatron tensor lives on one stage
            units[names] = RefitUnit(
                names=names,
                shapes=tuple(_slice_shape(s, dim, n, tp_shard) for s, n in zip(shapes, names, strict=True)),
                full_shapes=shapes,
                dtype=_DTYPES[dtype_name],
                tp_dim=dim,
                stage=stage,
                order=order,
            )
    streamed = {n for names in units for n in names}
    absent = [n for n in export_shapes if n not in streamed]
    if absent:
        raise HFCheckpointError(
            f"no pipeline stage holds these tensors of the config: {absent[:20]}; pass every model chunk of this rank"
        )
    ordered = sorted(units.values(), key=lambda u: (u.order, u.names))
    buckets: list[tuple[RefitUnit, ...]] = []
    current: list[RefitUnit] = []
    size = 0
    for unit in ordered:
        if current and size + unit.nbytes > bucket_bytes:
            buckets.append(tuple(current))
            current, size = [], 0
        current.append(unit)
        size += unit.nbytes
    if current:
        buckets.append(tuple(current))
    plan = RefitPlan(buckets=tuple(buckets), bucket_bytes=bucket_bytes, tp_shard=tp_shard)
    return plan, chunks, padding, groups, same_slice


def _owned(
    chunks: Sequence[tuple[list[TensorPlan], dict[str, torch.Tensor]]],
) -> dict[tuple[str, ...], tuple[TensorPlan, dict[str, torch.Tensor], int]]:
    """This rank's exported plans keyed by the HF names of each of their units, with the unit's part index."""
    return {
        names: (plan, state, part)
        for plans, state in chunks
        for plan in plans
        if plan.export
        for part, names in enumerate(_unit_parts(plan))
    }


def _materialize(
    unit: RefitUnit,
    owned: tuple[TensorPlan, dict[str, torch.Tensor], int] | None,
    cfg: PuzzleModelConfig,
    padding: dict[int, tuple[int, int]],
    groups: RefitGroups,
    tp_shard: tuple[int, int] | None,
    same_slice: bool,
    device: torch.device,
) -> list[tuple[str, torch.Tensor]]:
    """One unit's HF tensors on this rank: gathered over TP on the owning stage, broadcast over the pipeline.

    When the whole pipeline group wants the same slice (``same_slice``) only that slice is broadcast; otherwise the
    whole tensor is, and each rank cuts its own slice.
    """

    def cut(name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tp_shard is None else hf_tp_slice(tensor, unit.tp_dim, *tp_shard, name=name).contiguous()

    out: list[tuple[str, torch.Tensor]] = []
    src = groups.pp_global_ranks[unit.stage]
    if owned is None:  # another stage owns it: receive
        for name, shape, full in zip(unit.names, unit.shapes, unit.full_shapes, strict=True):
            wire = torch.empty(shape if same_slice else full, dtype=unit.dtype, device=device)
            torch.distributed.broadcast(wire, src=src, group=groups.pp_group)
            out.append((name, wire if same_slice else cut(name, wire)))
        return out
    plan, state, part = owned
    # Cast first: the conversion only moves and pads data, so this is bitwise the same as casting its result, and the
    # gather and the conversion workspace are then in the (usually smaller) output dtype.
    local = state[plan.megatron_name].detach().to(unit.dtype)
    if plan.kind == "fc1":  # this unit is the gate (part 0) or up (part 1) half of every TP shard: a column split
        local = local.chunk(2, dim=0)[part]
        plan = dataclasses.replace(plan, kind="column", hf_names=unit.names)
    if plan.kind == "replicated" or groups.tp_size == 1:
        shards = [local] * (1 if plan.kind == "replicated" else groups.tp_size)
    else:
        shards = [torch.empty_like(local) for _ in range(groups.tp_size)]
        torch.distributed.all_gather(shards, local.contiguous(), group=groups.tp_group)
    hf = megatron_to_hf_tensors(plan, shards, cfg)
    del shards
    for name, full in zip(unit.names, unit.full_shapes, strict=True):
        whole = pad_ffn_for_export(name, hf.pop(name), padding)
        if tuple(whole.shape) != full:
            raise HFCheckpointError(
                f"{name} ({plan.where()}): the model's {plan.megatron_name} gives shape {tuple(whole.shape)}, the "
                f"config says {full}; was the model built from this config?"
            )
        mine = cut(name, whole)
        if groups.pp_size > 1:
            torch.distributed.broadcast(mine if same_slice else whole.contiguous(), src=src, group=groups.pp_group)
        out.append((name, mine))
    return out


def _device(chunks: Sequence[tuple[list[TensorPlan], dict[str, torch.Tensor]]]) -> torch.device:
    for _, state in chunks:
        for tensor in state.values():
            return tensor.device
    return torch.device("cpu")


def stream_hf_weights(
    model: Any,
    *,
    config: PuzzleModelConfig,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    tp_shard: tuple[int, int] | None = None,
    dtype: torch.dtype | str | None = None,
    groups: RefitGroups | None = None,
    export_widths: bool = True,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield the policy's HF-named tensors in buckets; a collective over the model-parallel (TP x PP) group.

    Every rank of the group calls it with its model chunk(s) and iterates it to the end; every rank yields every
    tensor of the model (each stage's tensors broadcast from the stage that owns them), in the export's file order,
    bitwise what :func:`~nemotron_plugins.puzzle.hf_checkpoint.export_hf_checkpoint` writes (FFN widths padded the
    same way). Yielded tensors may share storage with the model's parameters (no copy where none is needed): treat
    them as read-only and do not keep them past the next update.

    Args:
        model: This rank's ``GPTModel``, a wrapper of one (DDP), or its list of virtual-pipeline chunks.
        config: The :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig` the model was built from (the
            Megatron model does not record its unpadded vocabulary or per-layer HF layout).
        bucket_bytes: Largest bucket in bytes of yielded tensors; a single unit (a layer's q / k / v together, or
            any one other tensor: gate and up stream separately) larger than this is yielded as a bucket of its own.
        tp_shard: ``(rank, size)``: yield this rank's slice of each tensor for an engine at TP ``size``
            (:func:`hf_tp_slice`) instead of whole tensors.
        dtype: Cast to this dtype (e.g. ``torch.bfloat16``); ``None`` keeps the training dtype.
        groups: The TP / PP groups; default: megatron-core's ``parallel_state``.
        export_widths: Zero-pad SwiGLU widths as the export writes them (for an engine loaded from the export);
            ``False`` streams the trained widths (for a copy built from ``config`` itself, e.g. the megatron
            engine's generation-layout copy).

    Yields:
        Lists of ``(hf_name, tensor)``; :func:`plan_refit` gives the same buckets without moving data.

    Raises:
        ValueError: a bad ``bucket_bytes`` / ``tp_shard`` / ``dtype`` (named).
        HFCheckpointError: the stages do not hold every tensor of ``config``, or a tensor does not split for
            ``tp_shard`` (named).
    """
    plan, chunks, padding, groups, same_slice = _plan(
        model, config, bucket_bytes, tp_shard, dtype, groups, export_widths
    )
    return _stream(plan, chunks, config, padding, groups, same_slice)


def _stream(
    plan: RefitPlan,
    chunks: list,
    cfg: PuzzleModelConfig,
    padding: dict[int, tuple[int, int]],
    groups: RefitGroups,
    same_slice: bool,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    owned = _owned(chunks)
    device = _device(chunks)
    for units in plan.buckets:
        bucket: list[tuple[str, torch.Tensor]] = []
        for unit in units:
            bucket += _materialize(
                unit, owned.get(unit.names), cfg, padding, groups, plan.tp_shard, same_slice, device
            )
        yield bucket
        del bucket  # the consumer's reference is the only one left


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
