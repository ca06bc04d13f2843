"""Search stages 1-3 on megatron-core: the parent and every candidate child as Megatron Puzzle models, TP, PP and DP.

The plain-PyTorch forward (:mod:`nemotron_plugins.puzzle.search.hf_forward`) is the single-process reference; this
module runs the same measurements on :func:`~nemotron_plugins.puzzle.model.build_puzzle_model` models loaded from
the HF tensors with :func:`~nemotron_plugins.puzzle.hf_checkpoint.load_hf_tensors`, on every rank of a
``TP x PP x DP`` group (gloo on CPU, NCCL on GPU). With pipeline parallelism each rank builds and loads only its
stage's layers (consecutive layers, as even a split as possible: :func:`stage_layer_counts`), and every forward is
megatron's forward-only pipeline schedule (``get_forward_backward_func(forward_only=True)``, what the trainers run),
which sends the hidden states from stage to stage:

* **score** (:func:`score_variants_megatron`): the candidates (parent with one sub-block swapped) are split over the
  data-parallel ranks; each candidate is a Megatron model at TP x PP whose logits (on the last stage) stay
  vocab-parallel: ``KL(parent || child)`` and the LM loss are computed there from each rank's vocabulary shard with
  three all-reduces over the TP group (max, sum of exponentials, the per-token sums), never gathering the
  vocabulary; the parent's logits live on the last stage too. Results are all-gathered.
* **library** (:func:`channel_contributions_megatron`): ``mean |X_k|`` of the SwiGLU intermediate is read at the
  input of each layer's ``linear_fc2`` on the stage that owns the layer; ``linear_fc2`` is column-sharded over TP
  (each rank scores its own channels, then an all-gather in rank order gives the HF channel order); the calibration
  rows are split over DP and the sums all-reduced; the stages' per-layer results are gathered over the PP group in
  layer order. The KV-head pooling and linear replacements are computed on the HF tensors, as in the reference.
* **BLD** (:func:`capture_megatron`, :func:`blockwise_distill_megatron`): the parent's sub-block inputs and outputs
  are captured on the stage that owns the layer (full hidden states on every TP rank: no sequence parallelism), and
  that stage trains the variants of its own layers (:mod:`~nemotron_plugins.puzzle.search.bld`) on each rank's share
  of every batch, all-reducing their gradients over DP; the trained variants are gathered over the PP group. BLD is
  embarrassingly parallel over layers (each variant learns from its own parent sub-block's input and output only),
  so the stages never exchange anything but the parent's forward.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig

__all__ = [
    "SearchParallel",
    "SearchParallelError",
    "blockwise_distill_megatron",
    "build_library_megatron",
    "build_megatron_model",
    "capture_megatron",
    "channel_contributions_megatron",
    "dp_all_reduce",
    "dp_rank_and_size",
    "pipeline_forward",
    "run_parallel",
    "score_variants_megatron",
    "stage_layer_counts",
    "stage_layers",
    "vocab_parallel_token_kl",
    "vocab_parallel_token_nll",
]


class SearchParallelError(ValueError):
    """A parallel layout the search stages cannot run with; the message names the setting."""


def stage_layer_counts(num_layers: int, pipeline_model_parallel_size: int) -> list[int]:
    """Layers per pipeline stage: consecutive layers split as evenly as possible, the first stages one longer.

    >>> stage_layer_counts(7, 3)
    [3, 2, 2]
    """
    base, extra = divmod(num_layers, pipeline_model_parallel_size)
    return [base + (1 if i < extra else 0) for i in range(pipeline_model_parallel_size)]


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchParallel:
    """How a search stage is laid out over processes."""

    tensor_model_parallel_size: int = 1
    """TP size of the Megatron models."""
    data_parallel_size: int = 1
    """DP size (world size = TP x PP x DP): candidates (score) or calibration / training rows (library, BLD) split."""
    pipeline_model_parallel_size: int = 1
    """PP size: every Megatron model split into this many stages of consecutive layers (:func:`stage_layer_counts`);
    at most the number of layers."""
    micro_batch_size: int = 8
    """Sequences per Megatron forward (one pipeline micro-batch)."""
    torch_threads: int = 1
    """``torch.set_num_threads`` per process."""

    @property
    def world_size(self) -> int:
        """TP x PP x DP processes."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.data_parallel_size

    @property
    def layout(self) -> str:
        """The layout as a string, e.g. ``"TP2 DP1"`` (``"TP2 PP2 DP1"`` with pipeline parallelism)."""
        pp = f" PP{self.pipeline_model_parallel_size}" if self.pipeline_model_parallel_size > 1 else ""
        return f"TP{self.tensor_model_parallel_size}{pp} DP{self.data_parallel_size}"

    def validate(self) -> None:
        """Raise :class:`SearchParallelError` naming the first setting that cannot run."""
        for name in (
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "data_parallel_size",
            "micro_batch_size",
            "torch_threads",
        ):
            if getattr(self, name) < 1:
                raise SearchParallelError(f"{name} must be >= 1, got {getattr(self, name)}")

    def check_cfg(self, cfg: PuzzleModelConfig) -> None:
        """Raise :class:`SearchParallelError` when ``cfg``'s heads or FFN widths do not split over the TP size or its
        layers over the PP size."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if pp > cfg.num_hidden_layers:
            raise SearchParallelError(
                f"pipeline_model_parallel_size {pp} is larger than the model's {cfg.num_hidden_layers} layers: every "
                f"pipeline stage needs at least one layer (use at most {cfg.num_hidden_layers})"
            )
        if cfg.num_attention_heads % tp:
            raise SearchParallelError(
                f"tensor_model_parallel_size {tp} does not divide num_attention_heads {cfg.num_attention_heads}"
            )
        for i, block in enumerate(cfg.blocks):
            if block.attention.kind == "gqa" and block.attention.num_key_value_heads % tp:
                raise SearchParallelError(
                    f"tensor_model_parallel_size {tp} does not divide layer {i}'s "
                    f"{block.attention.num_key_value_heads} KV heads"
                )
            if block.ffn.kind == "swiglu" and block.ffn.intermediate_size % tp:
                raise SearchParallelError(
                    f"tensor_model_parallel_size {tp} does not divide layer {i}'s FFN width "
                    f"{block.ffn.intermediate_size}"
                )

    def check_variants(self, cfg: PuzzleModelConfig, variants: Sequence[Any]) -> None:
        """Raise :class:`SearchParallelError` naming the first library variant whose child does not split over TP."""
        from nemotron_plugins.puzzle.search.library import substitute

        self.check_cfg(cfg)
        for var in variants:
            sub = var.attention if var.part == "attention" else var.ffn
            child = substitute(cfg, {}, [dataclasses.replace(var, tensors={})])[0]
            try:
                self.check_cfg(child)
            except SearchParallelError as err:
                raise SearchParallelError(
                    f"library variant layer {var.layer} {var.part} {var.name!r} ({sub.kind}): {err}; build the library "
                    "with KV-head counts and FFN widths the TP size divides (--kv-heads, --ffn-fractions) or score at "
                    "a TP size that divides them"
                ) from None


# --------------------------------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------------------------------


def _parallel_config(settings: SearchParallel) -> Any:
    from nemotron_plugins.runtime.config import ParallelConfig

    return ParallelConfig(
        tensor_model_parallel_size=settings.tensor_model_parallel_size,
        pipeline_model_parallel_size=settings.pipeline_model_parallel_size,
    )


def _check_group(settings: SearchParallel) -> None:
    from megatron.core import parallel_state as ps

    tp, dp = ps.get_tensor_model_parallel_world_size(), ps.get_data_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    want = (settings.tensor_model_parallel_size, settings.data_parallel_size, settings.pipeline_model_parallel_size)
    if (tp, dp, pp) != want:
        raise SearchParallelError(
            f"the process group is TP{tp} PP{pp} DP{dp} but the settings ask for {settings.layout} "
            "(tensor_model_parallel_size x pipeline_model_parallel_size x data_parallel_size must be the world size)"
        )


def _parallel_worker(
    rank: int, fn: Callable[..., Any], settings: SearchParallel, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    del rank  # the launcher's environment variables carry it
    from nemotron_plugins.runtime.distributed import distributed_context

    with distributed_context(_parallel_config(settings), seed=0):
        _check_group(settings)
        return fn(*args, **kwargs)


def run_parallel(
    fn: Callable[..., Any],
    settings: SearchParallel,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 3600.0,
) -> Any:
    """``fn(*args, **kwargs)`` on every rank of a ``TP x PP x DP`` group; rank 0's result.

    In this process for one rank or inside a launcher's group (``torchrun``: ``RANK`` set, or a context already up),
    else ``TP x PP x DP`` local processes (:func:`~nemotron_plugins.runtime.distributed.run_local_processes`, gloo on CPU;
    ``fn`` and ``args`` must pickle).
    """
    from nemotron_plugins.runtime.distributed import ensure_distributed, get_context, run_local_processes

    settings.validate()
    torch.set_num_threads(settings.torch_threads)
    if settings.world_size == 1 or get_context() is not None or "RANK" in os.environ:
        with ensure_distributed(_parallel_config(settings), seed=0):
            _check_group(settings)
            return fn(*args, **dict(kwargs or {}))
    results = run_local_processes(
        _parallel_worker,
        settings.world_size,
        (fn, dataclasses.replace(settings), tuple(args), dict(kwargs or {})),
        timeout_s=timeout_s,
        threads_per_process=settings.torch_threads,
    )
    return results[0]


def dp_rank_and_size() -> tuple[int, int]:
    """This process's data-parallel rank and the DP size (``(0, 1)`` without megatron's groups)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return 0, 1
    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def dp_all_reduce(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` in place over the data-parallel group (one flattened all-reduce; no-op at DP 1)."""
    from megatron.core import parallel_state as ps

    if not tensors or dp_rank_and_size()[1] == 1 or not sum(t.numel() for t in tensors):
        return  # every rank of a DP group holds the same layers' tensors: all skip an empty reduce together
    device = _comm_device()
    dtype = torch.promote_types(tensors[0].dtype, torch.float64) if tensors[0].is_floating_point() else None
    flat = torch.cat([t.reshape(-1).to(device, dtype or t.dtype) for t in tensors])
    torch.distributed.all_reduce(flat, group=ps.get_data_parallel_group())
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _comm_device() -> torch.device:
    """Where collectives' tensors live: the current CUDA device with NCCL, else the CPU (gloo)."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _tp() -> tuple[int, int, Any]:
    from megatron.core import parallel_state as ps

    return (
        ps.get_tensor_model_parallel_rank(),
        ps.get_tensor_model_parallel_world_size(),
        ps.get_tensor_model_parallel_group(),
    )


def _pp() -> tuple[int, int, Any]:
    from megatron.core import parallel_state as ps

    return (
        ps.get_pipeline_model_parallel_rank(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_group(),
    )


def _all_gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """``obj`` of every rank of ``group`` (default: the world), in rank order."""
    if not torch.distributed.is_initialized():
        return [obj]
    size = torch.distributed.get_world_size(group)
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    torch.distributed.all_gather_object(out, obj, group=group)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def build_megatron_model(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], seq_length: int
) -> torch.nn.Module:
    """This rank's pipeline stage of the Megatron Puzzle model of ``cfg`` at the current TP / PP, loaded from the HF
    tensors ``weights`` (only the stage's own are read), frozen, in eval mode.

    The vocabulary is padded only as much as TP needs; the padded rows are zero and masked out of every softmax here.
    The stages hold :func:`stage_layer_counts` consecutive layers. With PP > 1 and tied embeddings the last stage's
    output layer is its own copy of the embedding (as in megatron's pipelined layout) loaded from the HF embedding:
    the model is built untied, since a frozen model needs no embedding-group synchronisation (megatron's initial one
    moves the copy to CUDA, absent on CPU).
    """
    from nemotron_plugins.puzzle.hf_checkpoint import load_hf_tensors
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.runtime.config import ParallelConfig

    tp, pp = _tp()[1], _pp()[1]
    counts = stage_layer_counts(cfg.num_hidden_layers, pp)
    if pp > 1 and cfg.tie_word_embeddings:
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
        weights = {**weights, "lm_head.weight": weights["model.embed_tokens.weight"]}
    dtype = next(iter(weights.values())).dtype
    model = build_puzzle_model(
        cfg,
        parallel=ParallelConfig(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            pipeline_layout=counts if len(set(counts)) > 1 else None,
        ),
        params_dtype=dtype,
        seq_length=seq_length,
        make_vocab_size_divisible_by=1,
        perform_initialization=False,
    )
    for param in model.parameters():
        param.data.zero_()  # the vocabulary padding rows are not in the HF tensors
    load_hf_tensors(model, [list(_stage_tensors(model, cfg, weights).items())], cfg)
    model.requires_grad_(False)
    model.eval()
    return model


def _stage_tensors(
    model: torch.nn.Module, cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The HF tensors of ``weights`` this pipeline stage's model is made of."""
    from nemotron_plugins.puzzle.hf_checkpoint import (
        EMBEDDING_NAME,
        FINAL_NORM_NAME,
        OUTPUT_NAME,
        plan_megatron_tensors,
    )
    from nemotron_plugins.puzzle.model import unwrap_model

    keys = set(unwrap_model(model).state_dict())
    plans = plan_megatron_tensors(
        cfg,
        layers=stage_layers(model),
        has_embedding=EMBEDDING_NAME in keys,
        has_final_norm=FINAL_NORM_NAME in keys,
        has_output_layer=OUTPUT_NAME in keys,
        model_keys=keys,
    )
    needed = {name for plan in plans for name in plan.hf_names}
    return {name: tensor for name, tensor in weights.items() if name in needed}


def stage_layers(model: torch.nn.Module) -> list[int]:
    """Global indices of the decoder layers of this pipeline stage's ``model``, in order."""
    return [int(layer.layer_number) - 1 for layer in _layers(model)]


def _device(model: torch.nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@torch.no_grad()
def pipeline_forward(
    model: torch.nn.Module,
    micro_batches: Sequence[torch.Tensor],
    on_logits: Callable[[int, torch.Tensor], Any] | None = None,
) -> list[Any]:
    """Forward ``micro_batches`` (token ids ``[rows, seq]`` each) through the pipeline with megatron's forward-only
    schedule; on the last stage, ``on_logits(k, logits)`` of every micro-batch ``k`` (this TP rank's vocabulary
    shard ``[rows, seq, padded_vocab / TP]``), in order; ``[]`` on the other stages.

    Every rank of a pipeline calls it with micro-batches of the same shapes; consecutive micro-batches of one shape
    go through one schedule (its send / receive buffers have one shape), e.g. the full ones and a shorter last one.
    ``on_logits`` may run collectives over the TP group (every TP rank of the last stage calls it in order).
    """
    from nemotron_plugins.training.step import run_schedule

    device = _device(model)
    reports: list[Any] = []
    k = 0
    while k < len(micro_batches):
        shape = tuple(micro_batches[k].shape)
        group = []
        while k < len(micro_batches) and tuple(micro_batches[k].shape) == shape:
            group.append((k, micro_batches[k]))
            k += 1

        def forward_step(data_iterator: Any, model_: Any) -> tuple[torch.Tensor, Callable[..., Any]]:
            index, ids = next(data_iterator)
            ids = ids.to(device)
            positions = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
            output = model_(ids, positions, None)

            def loss_func(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
                value = on_logits(index, logits) if on_logits is not None else None
                return logits.new_zeros(()), torch.tensor(0, dtype=torch.int), value

            return output, loss_func

        reports += run_schedule(
            [model], group, forward_step, seq_length=shape[1], micro_batch_size=shape[0], forward_only=True
        )
    return reports


def _local_log_softmax(local: torch.Tensor, vocab: int) -> torch.Tensor:
    """Vocab-parallel ``log_softmax`` in float64 of one rank's logits shard; padded vocabulary entries are ``-inf``."""
    tp_rank, tp, group = _tp()
    x = local.double()
    start = tp_rank * x.shape[-1]
    ids = torch.arange(start, start + x.shape[-1], device=x.device)
    x = x.masked_fill(ids >= vocab, float("-inf"))
    m = x.max(dim=-1, keepdim=True).values
    if tp > 1:
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX, group=group)
    total = (x - m).exp().sum(dim=-1, keepdim=True)
    if tp > 1:
        torch.distributed.all_reduce(total, group=group)
    return x - m - total.log()


def vocab_parallel_token_kl(parent_local: torch.Tensor, child_local: torch.Tensor, vocab: int) -> torch.Tensor:
    """Per position ``KL(parent || child)`` (float64) from each TP rank's logits shard, without gathering the
    vocabulary; the same ``[batch, seq]`` on every TP rank."""
    _, tp, group = _tp()
    logp, logq = _local_log_softmax(parent_local, vocab), _local_log_softmax(child_local, vocab)
    p = logp.exp()
    kl = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(dim=-1)
    if tp > 1:
        torch.distributed.all_reduce(kl, group=group)
    return kl


def vocab_parallel_token_nll(child_local: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Per position ``-log q(ids[:, t+1])`` (float64) from each TP rank's logits shard: ``[batch, seq - 1]``."""
    tp_rank, tp, group = _tp()
    logq = _local_log_softmax(child_local[:, :-1], vocab)
    width = logq.shape[-1]
    target = ids[:, 1:].to(logq.device) - tp_rank * width
    mine = (target >= 0) & (target < width)
    picked = logq.gather(-1, target.clamp(0, width - 1).unsqueeze(-1)).squeeze(-1)
    nll = torch.where(mine, -picked, torch.zeros_like(picked))
    if tp > 1:
        torch.distributed.all_reduce(nll, group=group)
    return nll


# --------------------------------------------------------------------------------------------------------------------
# Stage 3: replace-1-block scoring
# --------------------------------------------------------------------------------------------------------------------


def score_variants_megatron(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    variants: Sequence[Any],
    held_out: torch.Tensor,
    settings: SearchParallel,
    *,
    metric: str = "kl",
    batch_sizes: Sequence[int] = (1,),
    seq_len: int = 128,
    runtimes: Mapping[tuple[int, str, str], Mapping[int, float]] | None = None,
) -> list[Any]:
    """:func:`~nemotron_plugins.puzzle.search.score.score_variants` on Megatron models; every rank of a
    ``TP x PP x DP`` group calls it and gets the same list.

    Candidate ``j`` is scored by the pipeline of DP rank ``j % DP`` on the whole held-out set,
    ``settings.micro_batch_size`` rows per pipeline micro-batch; each stage builds only its own layers of the
    candidate. The parent's logits and the per-token KL / LM loss live on the last stage; its TP rank 0 also computes
    the per-block cost (parameters, KV bytes, the runtime of the sub-block measured with the plain-torch forward, or
    imported).
    """
    from megatron.core import parallel_state as ps

    from nemotron_plugins.puzzle.search.library import substitute
    from nemotron_plugins.puzzle.search.score import VariantScore, variant_cost

    if metric not in ("kl", "lm_loss"):
        raise ValueError(f"metric must be 'kl' or 'lm_loss', got {metric!r}")
    settings.validate()
    settings.check_variants(cfg, variants)
    _check_group(settings)
    dp_rank, dp = dp_rank_and_size()
    reports = ps.is_pipeline_last_stage() and _tp()[0] == 0
    seq = int(held_out.shape[1])
    micro = [
        held_out[i : i + settings.micro_batch_size] for i in range(0, held_out.shape[0], settings.micro_batch_size)
    ]
    mine = [j for j in range(len(variants)) if j % dp == dp_rank]
    parent_logits: list[torch.Tensor] = []
    if metric == "kl" and mine:
        parent = build_megatron_model(cfg, weights, seq)
        parent_logits = pipeline_forward(parent, micro, lambda _k, logits: logits.detach())
        del parent

    def token_sums(k: int, logits: torch.Tensor) -> tuple[torch.Tensor, int]:
        if metric == "kl":
            per_token = vocab_parallel_token_kl(parent_logits[k], logits, cfg.vocab_size)
        else:
            per_token = vocab_parallel_token_nll(logits, micro[k], cfg.vocab_size)
        return per_token.sum().cpu(), per_token.numel()

    results: dict[int, dict[str, Any]] = {}
    for j in mine:
        var = variants[j]
        child_cfg, child_w = substitute(cfg, weights, [var])
        child = build_megatron_model(child_cfg, child_w, seq)
        sums = pipeline_forward(child, micro, token_sums)
        del child
        if not reports:
            continue
        total = torch.zeros((), dtype=torch.float64)
        for part, _ in sums:
            total += part
        count = sum(n for _, n in sums)
        params, kv, runtime = variant_cost(
            cfg, weights, var, batch_sizes=batch_sizes, seq_len=seq_len, runtimes=runtimes
        )
        results[j] = {"score": float(total / count), "params": params, "kv": kv, "runtime": runtime}
    merged: dict[int, dict[str, Any]] = {}
    for part in _all_gather_objects(results):
        merged.update(part)
    out = []
    for j, var in enumerate(variants):
        row = merged[j]
        out.append(
            VariantScore(
                layer=var.layer,
                part=var.part,
                name=var.name,
                score=row["score"],
                params=row["params"],
                kv_bytes_per_token=row["kv"],
                runtime_s=row["runtime"],
            )
        )
    return out


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: channel contributions
# --------------------------------------------------------------------------------------------------------------------


def _dp_rows(n: int) -> torch.Tensor:
    dp_rank, dp = dp_rank_and_size()
    return torch.tensor_split(torch.arange(n), dp)[dp_rank]


def _layers(model: torch.nn.Module) -> Any:
    from nemotron_plugins.puzzle.model import unwrap_model

    return unwrap_model(model).decoder.layers


@torch.no_grad()
def channel_contributions_megatron(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], calibration: torch.Tensor, settings: SearchParallel
) -> dict[int, torch.Tensor]:
    """:func:`~nemotron_plugins.puzzle.search.library.channel_contributions` on the Megatron parent; every rank of a
    ``TP x PP x DP`` group calls it and gets the same ``{layer: [width]}`` (in layer order and the HF channel order,
    ``weights``' dtype).

    Each stage reads its own layers' ``linear_fc2`` inputs while the calibration micro-batches flow through the
    pipeline; the rows are split over DP, the channel shards gathered over TP and the layers over PP.
    """
    from megatron.core import parallel_state as ps

    settings.validate()
    settings.check_cfg(cfg)
    _check_group(settings)
    _, tp, tp_group = _tp()
    model = build_megatron_model(cfg, weights, int(calibration.shape[1]))
    modules = dict(zip(stage_layers(model), _layers(model), strict=True))
    layers = [i for i in modules if cfg.blocks[i].ffn.kind == "swiglu"]
    sums = {i: torch.zeros(cfg.blocks[i].ffn.intermediate_size // tp, dtype=torch.float64) for i in layers}

    def hook(i: int) -> Callable[..., None]:
        def pre(_module: Any, inputs: tuple[Any, ...]) -> None:
            sums[i] += inputs[0].detach().abs().double().sum(dim=(0, 1)).cpu()

        return pre

    handles = [modules[i].mlp.linear_fc2.register_forward_pre_hook(hook(i)) for i in layers]
    rows = _dp_rows(calibration.shape[0])
    micro = [
        calibration[rows[s : s + settings.micro_batch_size]] for s in range(0, len(rows), settings.micro_batch_size)
    ]
    try:
        pipeline_forward(model, micro)
    finally:
        for handle in handles:
            handle.remove()
    out: dict[int, torch.Tensor] = {}
    if layers:  # every rank of this stage's DP and TP groups holds the same layers
        flat = torch.cat([sums[i] for i in layers])
        if dp_rank_and_size()[1] > 1:
            flat = flat.to(_device(model))
            torch.distributed.all_reduce(flat, group=ps.get_data_parallel_group())
        if tp > 1:
            parts = [torch.empty_like(flat) for _ in range(tp)]
            torch.distributed.all_gather(parts, flat.to(_device(model)).contiguous(), group=tp_group)
        else:
            parts = [flat]
        tokens = calibration.shape[0] * calibration.shape[1]
        offset = 0
        for i in layers:
            width = sums[i].numel()
            act = torch.cat([p[offset : offset + width].cpu() for p in parts]) / tokens
            offset += width
            down = weights[f"model.layers.{i}.mlp.down_proj.weight"]
            out[i] = act.to(down.dtype) * down.norm(dim=0)
    merged: dict[int, torch.Tensor] = {}
    for part in _all_gather_objects(out, _pp()[2]):
        merged.update(part)
    return {i: merged[i] for i in sorted(merged)}


def build_library_megatron(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    calibration: torch.Tensor,
    settings: SearchParallel,
    *,
    ffn_fractions: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
    kv_heads: Sequence[int] | None = None,
) -> list[Any]:
    """:func:`~nemotron_plugins.puzzle.search.library.build_library` with the channel contributions measured on the
    Megatron parent (:func:`channel_contributions_megatron`); every rank calls it and gets the same library."""
    from nemotron_plugins.puzzle.search.library import build_library

    contributions = channel_contributions_megatron(cfg, weights, calibration, settings)
    return build_library(
        cfg, weights, calibration, ffn_fractions=ffn_fractions, kv_heads=kv_heads, contributions=contributions
    )


# --------------------------------------------------------------------------------------------------------------------
# Stage 2: the parent's sub-block inputs and outputs
# --------------------------------------------------------------------------------------------------------------------


def capture_megatron(
    model: torch.nn.Module,
    cfg: PuzzleModelConfig,
    ids: torch.Tensor,
    layers: set[int],
    *,
    micro_batch_size: int | None = None,
) -> Any:
    """A :class:`~nemotron_plugins.puzzle.search.hf_forward.Capture` (``[batch, seq, hidden]``, on the model's device) of
    ``layers`` from a forward of the Megatron parent ``model`` on ``ids``.

    The forward is the pipeline's (:func:`pipeline_forward`, ``micro_batch_size`` rows per micro-batch, default all):
    every rank of the pipeline calls this with the same ``ids``, each with layers of its own stage (possibly none).
    The attention input is the residual stream entering the layer, its output what the attention module returns
    (row-parallel output already reduced over TP), the FFN input their sum (no dropout in eval) and the FFN output
    what the MLP module returns; the SwiGLU intermediate is not recorded.

    Raises:
        SearchParallelError: a layer of ``layers`` is on another pipeline stage.
    """
    from nemotron_plugins.puzzle.search.hf_forward import Capture

    modules = dict(zip(stage_layers(model), _layers(model), strict=True))
    elsewhere = sorted(set(layers) - set(modules))
    if elsewhere:
        raise SearchParallelError(
            f"layers {elsewhere} are not on this pipeline stage (it holds layers {sorted(modules)}): capture them on "
            "the stage that owns them"
        )
    parts: dict[str, dict[int, list[torch.Tensor]]] = {"attn_input": {}, "attn_output": {}, "ffn_output": {}}
    handles = []

    def keep(name: str, i: int, x: Any) -> None:
        x = x[0] if isinstance(x, tuple) else x
        # megatron's bias-dropout-add may add the residual in place
        parts[name].setdefault(i, []).append(x.detach().transpose(0, 1).clone())

    def on_layer(i: int) -> Callable[..., None]:
        def pre(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            keep("attn_input", i, kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

        return pre

    def on_output(name: str, i: int) -> Callable[..., None]:
        def post(_module: Any, _inputs: Any, output: Any) -> None:
            keep(name, i, output)

        return post

    for i in sorted(layers):
        block = cfg.blocks[i]
        handles.append(modules[i].register_forward_pre_hook(on_layer(i), with_kwargs=True))
        if block.attention.kind != "no_op":
            handles.append(modules[i].self_attention.register_forward_hook(on_output("attn_output", i)))
        if block.ffn.kind != "no_op":
            handles.append(modules[i].mlp.register_forward_hook(on_output("ffn_output", i)))
    step = micro_batch_size or max(int(ids.shape[0]), 1)
    try:
        pipeline_forward(model, [ids[s : s + step] for s in range(0, ids.shape[0], step)])
    finally:
        for handle in handles:
            handle.remove()
    cap = Capture(layers=layers)
    for name, per_layer in parts.items():
        for i, chunks in per_layer.items():
            getattr(cap, name)[i] = torch.cat(chunks)
    for i in sorted(layers):
        block = cfg.blocks[i]
        if block.ffn.kind != "no_op":
            x = cap.attn_input[i]
            cap.ffn_input[i] = x + cap.attn_output[i] if block.attention.kind != "no_op" else x
        if block.attention.kind == "no_op":
            del cap.attn_input[i]
    return cap


def blockwise_distill_megatron(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    variants: Sequence[Any],
    tokens: torch.Tensor,
    settings: SearchParallel,
    *,
    batch_size: int = 8,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[list[Any], dict[str, tuple[float, float]]]:
    """:func:`~nemotron_plugins.puzzle.search.bld.blockwise_distill` with the parent's activations captured from the
    Megatron parent at TP x PP and every batch split over the DP ranks (gradients all-reduced); every rank calls it
    and gets the same trained variants (in ``variants``' order) and losses.

    Each pipeline stage trains the variants of its own layers on the activations it captured (all stages run the
    parent's forward on the same batches, in the same order); the trained variants and their losses are gathered
    over the PP group. The variants themselves are trained as plain-torch sub-blocks, replicated over the TP group
    (each TP rank takes the same step on the same full activations), on the Megatron parent's device.
    """
    from nemotron_plugins.puzzle.search.bld import blockwise_distill

    settings.validate()
    settings.check_cfg(cfg)
    _check_group(settings)
    dp_rank, dp = dp_rank_and_size()
    parent = build_megatron_model(cfg, weights, int(tokens.shape[1]))
    device = _device(parent)
    here = set(stage_layers(parent))
    mine = [j for j, v in enumerate(variants) if v.layer in here]
    on_device = [
        dataclasses.replace(variants[j], tensors={k: t.to(device) for k, t in variants[j].tensors.items()})
        for j in mine
    ]

    def capture(ids: torch.Tensor, layers: set[int]) -> Any:
        return capture_megatron(parent, cfg, ids, layers, micro_batch_size=settings.micro_batch_size)

    def local_rows(rows: torch.Tensor) -> torch.Tensor:
        return torch.tensor_split(rows, dp)[dp_rank]

    trained, losses = blockwise_distill(
        cfg,
        weights,
        on_device,
        tokens,
        batch_size=batch_size,
        epochs=epochs,
        lr=lr,
        seed=seed,
        capture=capture,
        local_rows=local_rows,
        all_reduce=dp_all_reduce,
    )
    local = [dataclasses.replace(v, tensors={k: t.cpu() for k, t in v.tensors.items()}) for v in trained]
    by_index: dict[int, Any] = {}
    all_losses: dict[str, tuple[float, float]] = {}
    for indices, stage_variants, stage_losses in _all_gather_objects((mine, local, losses), _pp()[2]):
        by_index.update(zip(indices, stage_variants, strict=True))
        all_losses.update(stage_losses)
    keys = [f"{v.layer}.{v.part}.{v.name}" for v in variants]
    return [by_index[j] for j in range(len(variants))], {k: all_losses[k] for k in keys if k in all_losses}
