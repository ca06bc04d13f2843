"""Search stages 1-3 on megatron-core: the parent and every candidate child as Megatron Puzzle models, TP and DP.

The plain-PyTorch forward (:mod:`nemotron_plugins.puzzle.search.hf_forward`) is the single-process reference; this
module runs the same measurements on :func:`~nemotron_plugins.puzzle.model.build_puzzle_model` models loaded from
the HF tensors with :func:`~nemotron_plugins.puzzle.hf_checkpoint.load_hf_tensors`, on every rank of a
``TP x DP`` group (gloo on CPU, NCCL on GPU):

* **score** (:func:`score_variants_megatron`): the candidates (parent with one sub-block swapped) are split over the
  data-parallel ranks; each candidate is a Megatron model at TP whose logits stay vocab-parallel: ``KL(parent ||
  child)`` and the LM loss are computed from each rank's vocabulary shard with three all-reduces over the TP group
  (max, sum of exponentials, the per-token sums), never gathering the vocabulary. Results are all-gathered.
* **library** (:func:`channel_contributions_megatron`): ``mean |X_k|`` of the SwiGLU intermediate is read at the
  input of each layer's ``linear_fc2``, which is column-sharded over TP (each rank scores its own channels, then an
  all-gather in rank order gives the HF channel order); the calibration rows are split over DP and the sums
  all-reduced. The KV-head pooling and linear replacements are computed on the HF tensors, as in the reference.
* **BLD** (:func:`capture_megatron`): the parent's sub-block inputs and outputs are captured from the Megatron parent
  at TP (full hidden states on every TP rank: no sequence parallelism); :mod:`~nemotron_plugins.puzzle.search.bld`
  trains the variants on each rank's share of every batch and all-reduces their gradients over DP.

Pipeline parallelism is refused (:class:`SearchParallel.validate`): every stage reads the logits or the sub-block
activations of every layer on one rank, which a pipeline split would have to send to the last stage.
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
    "megatron_logits",
    "run_parallel",
    "score_variants_megatron",
    "vocab_parallel_token_kl",
    "vocab_parallel_token_nll",
]


class SearchParallelError(ValueError):
    """A parallel layout the search stages cannot run with; the message names the setting."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchParallel:
    """How a search stage is laid out over processes."""

    tensor_model_parallel_size: int = 1
    """TP size of the Megatron models."""
    data_parallel_size: int = 1
    """DP size (world size = TP x DP): candidates (score) or calibration / training rows (library, BLD) split."""
    pipeline_model_parallel_size: int = 1
    """Only 1: refused above (the stages read every layer's activations or the logits on one rank)."""
    micro_batch_size: int = 8
    """Sequences per Megatron forward."""
    torch_threads: int = 1
    """``torch.set_num_threads`` per process."""

    @property
    def world_size(self) -> int:
        """TP x DP processes."""
        return self.tensor_model_parallel_size * self.data_parallel_size

    @property
    def layout(self) -> str:
        """``TPxDP`` as a string, e.g. ``"TP2 DP1"``."""
        return f"TP{self.tensor_model_parallel_size} DP{self.data_parallel_size}"

    def validate(self) -> None:
        """Raise :class:`SearchParallelError` naming the first setting that cannot run."""
        for name in ("tensor_model_parallel_size", "data_parallel_size", "micro_batch_size", "torch_threads"):
            if getattr(self, name) < 1:
                raise SearchParallelError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pipeline_model_parallel_size != 1:
            raise SearchParallelError(
                f"pipeline_model_parallel_size {self.pipeline_model_parallel_size} is not supported by the search "
                "stages: scoring needs each candidate's full logits, the library the SwiGLU activations of every "
                "layer and BLD every sub-block's input and output on the rank that uses them; use TP and DP"
            )

    def check_cfg(self, cfg: PuzzleModelConfig) -> None:
        """Raise :class:`SearchParallelError` when ``cfg``'s heads or FFN widths do not split over the TP size."""
        tp = self.tensor_model_parallel_size
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

    return ParallelConfig(tensor_model_parallel_size=settings.tensor_model_parallel_size)


def _check_group(settings: SearchParallel) -> None:
    from megatron.core import parallel_state as ps

    tp, dp = ps.get_tensor_model_parallel_world_size(), ps.get_data_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    if (tp, dp, pp) != (settings.tensor_model_parallel_size, settings.data_parallel_size, 1):
        raise SearchParallelError(
            f"the process group is TP{tp} DP{dp} PP{pp} but the settings ask for {settings.layout} "
            "(tensor_model_parallel_size x data_parallel_size must be the world size, PP 1)"
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
    """``fn(*args, **kwargs)`` on every rank of a ``TP x DP`` group; rank 0's result.

    In this process for one rank or inside a launcher's group (``torchrun``: ``RANK`` set, or a context already up),
    else ``TP x DP`` local processes (:func:`~nemotron_plugins.runtime.distributed.run_local_processes`, gloo on CPU;
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

    if not tensors or dp_rank_and_size()[1] == 1:
        return
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


def _all_gather_objects(obj: Any) -> list[Any]:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def build_megatron_model(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], seq_length: int
) -> torch.nn.Module:
    """The Megatron Puzzle model of ``cfg`` at the current TP, loaded from the HF tensors ``weights``, in eval mode.

    The vocabulary is padded only as much as TP needs; the padded rows are zero and masked out of every softmax here.
    """
    from nemotron_plugins.puzzle.hf_checkpoint import load_hf_tensors
    from nemotron_plugins.puzzle.model import build_puzzle_model

    dtype = next(iter(weights.values())).dtype
    model = build_puzzle_model(
        cfg,
        params_dtype=dtype,
        seq_length=seq_length,
        make_vocab_size_divisible_by=1,
        perform_initialization=False,
    )
    for param in model.parameters():
        param.data.zero_()  # the vocabulary padding rows are not in the HF tensors
    load_hf_tensors(model, [list(weights.items())], cfg)
    model.requires_grad_(False)
    model.eval()
    return model


def _device(model: torch.nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@torch.no_grad()
def megatron_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """This TP rank's vocabulary shard of the logits ``[batch, seq, padded_vocab / TP]`` for ``ids`` ``[batch, seq]``."""
    device = _device(model)
    ids = ids.to(device)
    positions = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
    return model(ids, positions, None)


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
    ``TP x DP`` group calls it and gets the same list.

    Candidate ``j`` is scored by DP rank ``j % DP`` on the whole held-out set, ``settings.micro_batch_size`` rows per
    forward; its per-block cost (parameters, KV bytes, the runtime of its sub-block measured with the plain-torch
    forward by TP rank 0 of that DP rank, or imported) is computed there too.
    """
    from nemotron_plugins.puzzle.search.library import substitute
    from nemotron_plugins.puzzle.search.score import VariantScore, variant_cost

    if metric not in ("kl", "lm_loss"):
        raise ValueError(f"metric must be 'kl' or 'lm_loss', got {metric!r}")
    settings.validate()
    settings.check_variants(cfg, variants)
    _check_group(settings)
    dp_rank, dp = dp_rank_and_size()
    tp_rank = _tp()[0]
    seq = int(held_out.shape[1])
    micro = [
        held_out[i : i + settings.micro_batch_size] for i in range(0, held_out.shape[0], settings.micro_batch_size)
    ]
    mine = [j for j in range(len(variants)) if j % dp == dp_rank]
    parent_logits: list[torch.Tensor] = []
    if metric == "kl" and mine:
        parent = build_megatron_model(cfg, weights, seq)
        parent_logits = [megatron_logits(parent, ids) for ids in micro]
        del parent
    results: dict[int, dict[str, Any]] = {}
    for j in mine:
        var = variants[j]
        child_cfg, child_w = substitute(cfg, weights, [var])
        child = build_megatron_model(child_cfg, child_w, seq)
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for k, ids in enumerate(micro):
            logits = megatron_logits(child, ids)
            if metric == "kl":
                per_token = vocab_parallel_token_kl(parent_logits[k], logits, cfg.vocab_size)
            else:
                per_token = vocab_parallel_token_nll(logits, ids, cfg.vocab_size)
            total += per_token.sum().cpu()
            count += per_token.numel()
        del child
        params, kv, runtime = variant_cost(
            cfg, weights, var, batch_sizes=batch_sizes, seq_len=seq_len, runtimes=runtimes, measure=tp_rank == 0
        )
        results[j] = {"score": float(total / count), "params": params, "kv": kv, "runtime": runtime}
    merged: dict[int, dict[str, Any]] = {}
    for part in _all_gather_objects(results):
        for j, row in part.items():
            if j not in merged or row["runtime"] is not None:
                merged[j] = row
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
    ``TP x DP`` group calls it and gets the same ``{layer: [width]}`` (in the HF channel order, ``weights``' dtype)."""
    from megatron.core import parallel_state as ps

    settings.validate()
    settings.check_cfg(cfg)
    _check_group(settings)
    _, tp, tp_group = _tp()
    model = build_megatron_model(cfg, weights, int(calibration.shape[1]))
    layers = [i for i, b in enumerate(cfg.blocks) if b.ffn.kind == "swiglu"]
    sums = {
        i: torch.zeros(b.ffn.intermediate_size // tp, dtype=torch.float64)
        for i, b in enumerate(cfg.blocks)
        if i in layers
    }

    def hook(i: int) -> Callable[..., None]:
        def pre(_module: Any, inputs: tuple[Any, ...]) -> None:
            sums[i] += inputs[0].detach().abs().double().sum(dim=(0, 1)).cpu()

        return pre

    handles = [_layers(model)[i].mlp.linear_fc2.register_forward_pre_hook(hook(i)) for i in layers]
    rows = _dp_rows(calibration.shape[0])
    try:
        for start in range(0, len(rows), settings.micro_batch_size):
            megatron_logits(model, calibration[rows[start : start + settings.micro_batch_size]])
    finally:
        for handle in handles:
            handle.remove()
    if not layers:
        return {}
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
    out, offset = {}, 0
    for i in layers:
        width = sums[i].numel()
        act = torch.cat([p[offset : offset + width].cpu() for p in parts]) / tokens
        offset += width
        down = weights[f"model.layers.{i}.mlp.down_proj.weight"]
        out[i] = act.to(down.dtype) * down.norm(dim=0)
    return out


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


def capture_megatron(model: torch.nn.Module, cfg: PuzzleModelConfig, ids: torch.Tensor, layers: set[int]) -> Any:
    """A :class:`~nemotron_plugins.puzzle.search.hf_forward.Capture` (``[batch, seq, hidden]``, on the model's device) of
    ``layers`` from one forward of the Megatron parent ``model`` on ``ids``.

    The attention input is the residual stream entering the layer, its output what the attention module returns
    (row-parallel output already reduced over TP), the FFN input their sum (no dropout in eval) and the FFN output
    what the MLP module returns; the SwiGLU intermediate is not recorded.
    """
    from nemotron_plugins.puzzle.search.hf_forward import Capture

    cap = Capture(layers=layers)
    handles = []

    def to_bsh(x: Any) -> torch.Tensor:
        x = x[0] if isinstance(x, tuple) else x
        return x.detach().transpose(0, 1).clone()  # megatron's bias-dropout-add may add the residual in place

    def on_layer(i: int) -> Callable[..., None]:
        def pre(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            cap.attn_input[i] = to_bsh(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

        return pre

    def on_attention(i: int) -> Callable[..., None]:
        def post(_module: Any, _inputs: Any, output: Any) -> None:
            cap.attn_output[i] = to_bsh(output)

        return post

    def on_mlp(i: int) -> Callable[..., None]:
        def post(_module: Any, _inputs: Any, output: Any) -> None:
            cap.ffn_output[i] = to_bsh(output)

        return post

    decoder_layers = _layers(model)
    for i in sorted(layers):
        block = cfg.blocks[i]
        handles.append(decoder_layers[i].register_forward_pre_hook(on_layer(i), with_kwargs=True))
        if block.attention.kind != "no_op":
            handles.append(decoder_layers[i].self_attention.register_forward_hook(on_attention(i)))
        if block.ffn.kind != "no_op":
            handles.append(decoder_layers[i].mlp.register_forward_hook(on_mlp(i)))
    try:
        megatron_logits(model, ids)
    finally:
        for handle in handles:
            handle.remove()
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
    Megatron parent at TP and every batch split over the DP ranks (gradients all-reduced); every rank calls it and
    gets the same trained variants.

    The variants themselves are trained as plain-torch sub-blocks, replicated over the TP group (each TP rank takes
    the same step on the same full activations), on the Megatron parent's device.
    """
    from nemotron_plugins.puzzle.search.bld import blockwise_distill
    from nemotron_plugins.puzzle.search.hf_forward import Capture

    settings.validate()
    settings.check_cfg(cfg)
    _check_group(settings)
    dp_rank, dp = dp_rank_and_size()
    parent = build_megatron_model(cfg, weights, int(tokens.shape[1]))
    device = _device(parent)
    on_device = [dataclasses.replace(v, tensors={k: t.to(device) for k, t in v.tensors.items()}) for v in variants]

    def capture(ids: torch.Tensor, layers: set[int]) -> Capture:
        parts = [
            capture_megatron(parent, cfg, ids[i : i + settings.micro_batch_size], layers)
            for i in range(0, ids.shape[0], settings.micro_batch_size)
        ]
        if len(parts) == 1:
            return parts[0]
        out = Capture(layers=layers)
        for name in ("attn_input", "attn_output", "ffn_input", "ffn_output"):
            for i in getattr(parts[0], name):
                getattr(out, name)[i] = torch.cat([getattr(p, name)[i] for p in parts])
        return out

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
    return [dataclasses.replace(v, tensors={k: t.cpu() for k, t in v.tensors.items()}) for v in trained], losses
