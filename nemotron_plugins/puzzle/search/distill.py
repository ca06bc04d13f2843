"""Stage 6, global knowledge distillation (GKD) of the realized child from the parent, on the shared training stack.

After the MIP, Puzzle trains the whole child to imitate the whole parent with ``loss = cosine on hidden states + KL
on logits``: per token, ``kl_weight * T^2 * KL(softmax(parent / T) || softmax(child / T))`` plus ``cosine_weight *
mean_layers (1 - cos(h_parent_i, h_child_i))`` over the residual stream leaving every layer ``i`` (a Puzzle child
keeps the parent's depth: a removed block is a no-op layer, so layer ``i`` of both models is the same place in the
network).

Both models are megatron-core ``GPTModel`` s built by :mod:`nemotron_plugins.training.setup` from a run config
(:class:`~nemotron_plugins.launch.recipe_config.RecipeConfig`): the child (student) from its HF checkpoint, with
megatron DDP, megatron's optimizer and LR scheduler; the parent (teacher) frozen. Each optimizer step is
:func:`nemotron_plugins.training.step.optimizer_step` with a per-token loss normalised by the global batch, so the
loss is the token mean over the global batch whatever the micro-batch split and data-parallel size. Tensor parallel:
vocab-parallel logits are all-gathered (differentiably) before the softmax; with sequence parallelism the hidden
states are gathered over the sequence.

Pipeline parallel (``TP x PP x DP`` ranks): parent and child have the same depth, so with the same split
(:func:`~nemotron_plugins.puzzle.search.parallel.stage_layer_counts`, uneven through megatron's pipeline layout)
stage ``s`` of both holds the same layers. Each step the parent first runs megatron's forward-only pipeline schedule
over the step's micro-batches; every stage keeps its own layers' outputs (and the last stage the parent's logits,
vocab-parallel). The child then runs megatron's 1F1B schedule. Each stage's cosine terms,
``cosine_weight * sum over its layers (1 - cos) / num_layers`` summed over tokens and divided by the global batch's
tokens, are an auxiliary loss attached to the stage's output activation (:class:`_AttachAuxLoss`, the pattern of
megatron's ``MoEAuxLossAutoScaler``: identity forward, backward adds the auxiliary loss's gradient); the last stage's
``loss_func`` adds the KL term and its own layers' cosine terms. The per-stage sums add up to the single-process
loss; the logged ``loss`` / ``kl`` / ``cosine`` are reduced over the PP (and DP) group. The parent's per-step outputs
are held on each rank until the child's step has used them (at PP 1 the parent runs inside each micro-batch's
forward instead). The distilled child is written as an HF checkpoint by
:func:`~nemotron_plugins.puzzle.hf_checkpoint.export_hf_checkpoint` (TP shards gathered within each stage, the
stages' tensors sent to rank 0).

:func:`distill` runs on every rank of an initialised group; :func:`run_distill` sets up the group (in-process for one
rank, :func:`~nemotron_plugins.runtime.distributed.run_local_processes` for several, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = [
    "DistillError",
    "DistillResult",
    "DistillSettings",
    "cosine_distance_sum",
    "distill",
    "distill_loss_terms",
    "run_distill",
    "token_kl",
]


class DistillError(ValueError):
    """Settings or inputs distillation cannot run with; the message names the setting or file."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DistillSettings:
    """How the child is distilled."""

    steps: int = 100
    """Optimizer steps."""
    global_batch_size: int = 8
    """Sequences per optimizer step (over all data-parallel ranks)."""
    micro_batch_size: int = 4
    """Sequences per forward / backward."""
    lr: float = 1e-4
    """Peak learning rate (Adam)."""
    min_lr: float = 0.0
    """Learning rate at the last step (``lr_schedule`` decay)."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warmup."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0: off)."""
    kl_weight: float = 1.0
    """Weight of the logits KL term."""
    cosine_weight: float = 1.0
    """Weight of the hidden-state cosine term."""
    temperature: float = 1.0
    """Softmax temperature of the KL term (the term is scaled by ``T^2``)."""
    tensor_model_parallel_size: int = 1
    """TP size."""
    pipeline_model_parallel_size: int = 1
    """PP size: parent and child split into this many stages of consecutive layers (the same split; at most the
    number of layers, the first stages one layer longer when it does not divide)."""
    data_parallel_size: int = 1
    """DP size (world size = TP x PP x DP)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (TP > 1)."""
    seed: int = 0
    """Seed of the batch order and megatron's RNGs."""
    torch_threads: int = 1
    """``torch.set_num_threads`` per process."""

    @property
    def world_size(self) -> int:
        """TP x PP x DP processes."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.data_parallel_size

    def validate(self, num_sequences: int, num_layers: int | None = None) -> None:
        """Raise :class:`DistillError` naming the first setting that cannot run on ``num_sequences`` sequences (and a
        model of ``num_layers`` layers, when given).

        Megatron's non-interleaved pipeline schedule takes any number of micro-batches per step, so pipeline
        parallelism adds no batch constraint beyond the data-parallel split.
        """
        positive = ("steps", "global_batch_size", "micro_batch_size", "tensor_model_parallel_size")
        for name in (*positive, "pipeline_model_parallel_size", "data_parallel_size", "torch_threads"):
            if getattr(self, name) < 1:
                raise DistillError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise DistillError(f"lr must be > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.kl_weight < 0 or self.cosine_weight < 0 or self.kl_weight + self.cosine_weight == 0:
            raise DistillError(
                f"kl_weight and cosine_weight must be >= 0 and not both 0, got {self.kl_weight}, {self.cosine_weight}"
            )
        if self.temperature <= 0:
            raise DistillError(f"temperature must be > 0, got {self.temperature}")
        per_rank, rest = divmod(self.global_batch_size, self.data_parallel_size)
        if rest or per_rank % self.micro_batch_size:
            raise DistillError(
                f"global_batch_size {self.global_batch_size} must split into data_parallel_size "
                f"{self.data_parallel_size} x whole micro-batches of micro_batch_size {self.micro_batch_size}"
            )
        if self.global_batch_size > num_sequences:
            raise DistillError(
                f"global_batch_size {self.global_batch_size} is more than the {num_sequences} training sequences"
            )
        if self.sequence_parallel and self.tensor_model_parallel_size < 2:
            raise DistillError("sequence_parallel needs tensor_model_parallel_size >= 2")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise DistillError(f"warmup_steps must be in 0..steps-1, got {self.warmup_steps} (steps {self.steps})")
        if num_layers is not None and self.pipeline_model_parallel_size > num_layers:
            raise DistillError(
                f"pipeline_model_parallel_size {self.pipeline_model_parallel_size} is larger than the model's "
                f"{num_layers} layers: every pipeline stage needs at least one layer (use at most {num_layers})"
            )

    def parallel_config(self, num_layers: int | None = None) -> Any:
        """The :class:`~nemotron_plugins.runtime.config.ParallelConfig` of this layout; for a model of ``num_layers``
        layers an uneven pipeline split is megatron's ``pipeline_layout``
        (:func:`~nemotron_plugins.puzzle.search.parallel.stage_layer_counts`)."""
        from nemotron_plugins.puzzle.search.parallel import stage_layer_counts
        from nemotron_plugins.runtime.config import ParallelConfig

        pp = self.pipeline_model_parallel_size
        counts = stage_layer_counts(num_layers, pp) if num_layers is not None else [1]
        return ParallelConfig(
            tensor_model_parallel_size=self.tensor_model_parallel_size,
            pipeline_model_parallel_size=pp,
            sequence_parallel=self.sequence_parallel,
            pipeline_layout=counts if len(set(counts)) > 1 else None,
        )


@dataclass(kw_only=True, slots=True)
class DistillResult:
    """What :func:`distill` returns (the same on every rank)."""

    losses: list[dict[str, float]] = field(default_factory=list)
    """Per step: ``loss``, ``kl`` and ``cosine`` (token means over the global batch), ``lr``, ``grad_norm``."""
    out_dir: str = ""
    """The distilled child's HF checkpoint."""
    layout: str = ""
    """The layout the run used, ``"TP2 DP1"`` (``"TP1 PP2 DP1"`` with pipeline parallelism)."""


def distill_loss_terms(
    parent_logits: torch.Tensor,
    child_logits: torch.Tensor,
    parent_hidden: list[torch.Tensor],
    child_hidden: list[torch.Tensor],
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL and cosine terms.

    Args:
        parent_logits: ``[batch, seq, vocab]`` (real vocabulary only).
        child_logits: Same shape.
        parent_hidden: Per layer, the residual stream ``[seq, batch, hidden]`` leaving it.
        child_hidden: Same layers of the child.
        temperature: Softmax temperature (the KL is multiplied by ``T^2``).

    Returns:
        ``(kl, cosine)``, each ``[batch, seq]``: ``T^2 KL(parent || child)`` and the mean over layers of
        ``1 - cos(h_parent, h_child)``.
    """
    if len(parent_hidden) != len(child_hidden):
        raise DistillError(f"{len(parent_hidden)} parent layer outputs but {len(child_hidden)} of the child")
    kl = token_kl(parent_logits, child_logits, temperature=temperature)
    return kl, cosine_distance_sum(parent_hidden, child_hidden) / len(parent_hidden)


def token_kl(parent_logits: torch.Tensor, child_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 KL(softmax(parent / T) || softmax(child / T))`` per token, ``[batch, seq]`` (float32 softmax).

    Args:
        parent_logits: ``[batch, seq, vocab]`` (real vocabulary only).
        child_logits: Same shape.
        temperature: Softmax temperature.

    Returns:
        The per-token KL, ``[batch, seq]``.
    """
    logp = F.log_softmax(parent_logits.float() / temperature, dim=-1)
    logq = F.log_softmax(child_logits.float() / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1) * temperature**2


def cosine_distance_sum(parent_hidden: list[torch.Tensor], child_hidden: list[torch.Tensor]) -> torch.Tensor:
    """Sum over the given layers of ``1 - cos(h_parent, h_child)`` per token, ``[batch, seq]`` (float32).

    A pipeline stage calls this with its own layers; divided by the model's layer count it is the stage's share of the
    per-token mean over all layers.

    Args:
        parent_hidden: Per layer, the residual stream ``[seq, batch, hidden]`` leaving it (at least one layer).
        child_hidden: Same layers of the child.

    Returns:
        ``[batch, seq]``.
    """
    if len(parent_hidden) != len(child_hidden) or not parent_hidden:
        raise DistillError(f"{len(parent_hidden)} parent layer outputs but {len(child_hidden)} of the child")
    cos = torch.stack(
        [
            1.0 - F.cosine_similarity(p.float(), c.float(), dim=-1)
            for p, c in zip(parent_hidden, child_hidden, strict=True)
        ]
    ).sum(0)
    return cos.transpose(0, 1)


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on a pipeline stage's output activation whose backward also back-propagates an auxiliary loss.

    The pattern of megatron's ``MoEAuxLossAutoScaler``: ``forward(output, aux, scale)`` returns ``output``; in
    ``backward`` the gradient flowing into ``output`` passes through unchanged and ``aux`` receives ``scale`` (the
    gradient of a loss that includes ``aux`` once, times megatron's loss scale), so the stage's parameters get
    ``d aux / d params`` in the same backward pass the pipeline schedule runs on the output.
    """

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(aux)
        ctx.scale = scale
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        (aux,) = ctx.saved_tensors
        return grad_output, torch.full_like(aux, ctx.scale), None


def _batch_rows(num_rows: int, step: int, global_batch: int, seed: int) -> torch.Tensor:
    """Row indices of the global batch of 0-based ``step``: seeded permutations per epoch, concatenated."""
    out: list[int] = []
    start = step * global_batch
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_rows)
        perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out.extend(perm[offset : offset + global_batch - len(out)])
    return torch.tensor(out, dtype=torch.long)


def _recipe(model_dir: Path, settings: DistillSettings, seq_length: int, num_layers: int | None = None) -> Any:
    """The run config the shared training stack builds the model (and, for the child, optimizer) from."""
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.runtime.config import ModelConfig, OptimizerConfig

    return RecipeConfig(
        name="puzzle-distill",
        task="sft",
        model=ModelConfig(checkpoint=str(model_dir), seq_length=seq_length, params_dtype="float32"),
        parallel=settings.parallel_config(num_layers),
        optimizer=OptimizerConfig(
            lr=settings.lr,
            min_lr=settings.min_lr,
            warmup_steps=settings.warmup_steps,
            lr_schedule=settings.lr_schedule,
            clip_grad=settings.clip_grad,
            weight_decay=0.0,  # the zero-padded FFN channels of an exported child stay zero
        ),
        train_steps=settings.steps,
        global_batch_size=settings.global_batch_size,
        micro_batch_size=settings.micro_batch_size,
        seed=settings.seed,
    )


def _capture_layer_outputs(model: Any) -> tuple[list[torch.Tensor], list[Any]]:
    """Forward hooks appending each decoder layer's output hidden states ``[seq, batch, hidden]`` to a list."""
    from nemotron_plugins.puzzle.model import unwrap_model

    store: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        store.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(hook) for layer in unwrap_model(model).decoder.layers]
    return store, handles


def distill(
    parent_dir: str | os.PathLike[str],
    child_dir: str | os.PathLike[str],
    tokens: torch.Tensor,
    out_dir: str | os.PathLike[str],
    settings: DistillSettings,
    *,
    log: bool = True,
) -> DistillResult:
    """Distil the child checkpoint from the parent on ``tokens``; every rank of an initialised group calls this.

    Args:
        parent_dir: The parent's HF checkpoint (teacher; frozen).
        child_dir: The child's HF checkpoint (student; e.g. ``puzzle realize``'s ``RUN/child``).
        tokens: Training token ids ``[n, seq]`` (kept apart from any held-out evaluation tokens).
        out_dir: Where the distilled child's HF checkpoint is written.
        settings: Steps, batch, optimizer, loss weights, layout.
        log: Print one line per step on rank 0.

    Returns:
        The per-step losses and the output directory.

    Raises:
        DistillError: Bad settings, tokens, a process group of another layout, or parent and child that do not pair
            up (depth, vocabulary).
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.utils import make_viewless_tensor

    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint
    from nemotron_plugins.puzzle.search.parallel import pipeline_forward, stage_layers
    from nemotron_plugins.training.setup import (
        build_model,
        build_optimizer,
        build_scheduler,
        initialise_weights,
        load_architecture,
    )
    from nemotron_plugins.training.step import model_device, optimizer_step

    if tokens.ndim != 2:
        raise DistillError(f"tokens must be [n, seq], got shape {tuple(tokens.shape)}")
    seq_length = int(tokens.shape[1])
    child_arch = load_architecture(_recipe(Path(child_dir), settings, seq_length))
    parent_arch = load_architecture(_recipe(Path(parent_dir), settings, seq_length))
    if child_arch.num_hidden_layers != parent_arch.num_hidden_layers:
        raise DistillError(
            f"{child_dir} has {child_arch.num_hidden_layers} layers, the parent {parent_dir} "
            f"{parent_arch.num_hidden_layers}: a Puzzle child keeps the parent's depth (no-op layers)"
        )
    if child_arch.vocab_size != parent_arch.vocab_size or child_arch.hidden_size != parent_arch.hidden_size:
        raise DistillError(
            f"{child_dir} (vocab {child_arch.vocab_size}, hidden {child_arch.hidden_size}) and the parent {parent_dir} "
            f"(vocab {parent_arch.vocab_size}, hidden {parent_arch.hidden_size}) must agree"
        )
    if int(tokens.max()) >= child_arch.vocab_size or int(tokens.min()) < 0:
        raise DistillError(f"token ids must be in 0..{child_arch.vocab_size - 1}")
    num_layers = child_arch.num_hidden_layers
    settings.validate(tokens.shape[0], num_layers)
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    for name, want, got in (
        ("tensor_model_parallel_size", settings.tensor_model_parallel_size, tp),
        ("pipeline_model_parallel_size", settings.pipeline_model_parallel_size, pp),
        ("data_parallel_size", settings.data_parallel_size, dp),
    ):
        if want != got:
            raise DistillError(f"{name} {want} but the process group is TP{tp} PP{pp} DP{dp}")
    vocab = child_arch.vocab_size
    student_cfg = _recipe(Path(child_dir), settings, seq_length, num_layers)
    teacher_cfg = _recipe(Path(parent_dir), settings, seq_length, num_layers)

    teacher = build_model(teacher_cfg, parent_arch)
    initialise_weights(teacher_cfg, teacher, parent_arch)
    teacher.requires_grad_(False)
    teacher.eval()
    student = build_model(student_cfg, child_arch)
    initialise_weights(student_cfg, student, child_arch)
    ddp, optimizer = build_optimizer(student_cfg, student)
    scheduler = build_scheduler(student_cfg, optimizer)
    device = model_device(student)
    if stage_layers(teacher) != stage_layers(student):
        raise DistillError(
            f"pipeline stage {ps.get_pipeline_model_parallel_rank()} holds parent layers {stage_layers(teacher)} but "
            f"child layers {stage_layers(student)}"
        )
    last_stage = ps.is_pipeline_last_stage()
    t_store, t_handles = _capture_layer_outputs(teacher)
    s_store, s_handles = _capture_layer_outputs(student)
    local_layers = len(stage_layers(student))

    sequence_parallel = settings.sequence_parallel
    is_rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    gbs, mbs = settings.global_batch_size, settings.micro_batch_size
    per_rank = gbs // dp
    global_tokens = float(gbs * seq_length)
    positions = torch.arange(seq_length, device=device).unsqueeze(0).expand(mbs, seq_length)

    def full_logits(x: torch.Tensor) -> torch.Tensor:
        if tp > 1:
            x = tensor_parallel.gather_from_tensor_model_parallel_region(x)
        return x[..., :vocab]

    def full_hidden(hs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not sequence_parallel:
            return hs
        return [tensor_parallel.gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False) for h in hs]

    # The parent's outputs of micro-batch k: this stage's layer outputs and, on the last stage, its logits (this TP
    # rank's vocabulary shard). At PP 1 they are computed inside the child's forward step; at PP > 1 the parent's
    # pipeline runs first over the step's micro-batches (teacher_pass) and the child's steps take them from here.
    parent_outputs: dict[int, tuple[list[torch.Tensor], torch.Tensor | None]] = {}

    def teacher_pass(micro: list[torch.Tensor]) -> None:
        t_store.clear()
        logits = pipeline_forward(teacher, micro, lambda _k, x: x.detach())
        hidden = list(t_store)
        if len(hidden) != local_layers * len(micro):
            raise DistillError(
                f"the parent's pipeline gave {len(hidden)} layer outputs for {len(micro)} micro-batches of "
                f"{local_layers} layers"
            )
        for k in range(len(micro)):
            layer_outputs = hidden[k * local_layers : (k + 1) * local_layers]
            parent_outputs[k] = (layer_outputs, logits[k] if last_stage else None)

    def parent_for(k: int, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if pp > 1:
            return parent_outputs.pop(k)
        with torch.no_grad():
            t_store.clear()
            logits = teacher(ids, positions, None)
            return list(t_store), logits

    cosine_sums: list[torch.Tensor] = []  # per micro-batch: this stage's share of the cosine mean, summed over tokens

    def forward_step(data_iterator: Iterator[tuple[int, torch.Tensor]], model_: Any) -> tuple[Any, Any]:
        k, ids = next(data_iterator)
        t_hidden, t_logits = parent_for(k, ids)
        with torch.no_grad():
            parent_hidden = full_hidden(t_hidden)
        s_store.clear()
        output = model_(ids, positions, None)
        # this stage's share of the per-token mean over ALL layers of the model
        cos = cosine_distance_sum(parent_hidden, full_hidden(list(s_store))) / num_layers
        cosine_sums.append(cos.detach().sum())
        if not last_stage:
            grad_scale_func = student.config.grad_scale_func
            scale = float(grad_scale_func(torch.ones(1, device=device))) if grad_scale_func is not None else 1.0
            aux = settings.cosine_weight * cos.sum() / global_tokens
            attached = _AttachAuxLoss.apply(output, aux, scale)
            return make_viewless_tensor(attached, requires_grad=True, keep_graph=True), None
        with torch.no_grad():
            parent_logits = full_logits(t_logits)

        def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            kl = token_kl(parent_logits, full_logits(out), temperature=settings.temperature)
            loss_sum = (settings.kl_weight * kl).sum() + settings.cosine_weight * cos.sum()
            return loss_sum / global_tokens, torch.tensor(kl.numel(), device=device), {"kl": kl.detach().sum()}

        return output, loss_func

    layout = f"TP{tp} PP{pp} DP{dp}" if pp > 1 else f"TP{tp} DP{dp}"
    result = DistillResult(out_dir=str(out_dir), layout=layout)
    ddp.train()
    try:
        for step in range(settings.steps):
            rows = _batch_rows(tokens.shape[0], step, gbs, settings.seed)[
                dp_rank * per_rank : (dp_rank + 1) * per_rank
            ]
            micro = [tokens[rows[i : i + mbs]].to(device) for i in range(0, per_rank, mbs)]
            if pp > 1:
                teacher_pass(micro)
            cosine_sums.clear()
            stepped = optimizer_step(
                [ddp],
                optimizer,
                scheduler,
                list(enumerate(micro)),
                forward_step,
                seq_length=seq_length,
                micro_batch_size=mbs,
            )
            # [kl, cosine] summed over this rank's tokens: the KL from the last stage, each stage its layers' share of
            # the cosine mean; one TP rank of each stage counts (the others hold the same values)
            sums = torch.zeros(2, dtype=torch.float64, device=device)
            if ps.get_tensor_model_parallel_rank() == 0:
                for r in stepped.reports:
                    sums[0] += r["kl"].double()
                for c in cosine_sums:
                    sums[1] += c.double()
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(sums)
            kl_sum, cos_sum = sums.tolist()
            kl, cos = kl_sum / global_tokens, cos_sum / global_tokens
            loss = settings.kl_weight * kl + settings.cosine_weight * cos
            result.losses.append(
                {"loss": loss, "kl": kl, "cosine": cos, "lr": stepped.lr, "grad_norm": stepped.grad_norm}
            )
            if log and is_rank0 and (step == 0 or (step + 1) % 10 == 0 or step + 1 == settings.steps):
                print(
                    f"[distill] step {step + 1:4d}/{settings.steps}  loss {loss:.4f}  kl {kl:.4f}  "
                    f"cosine {cos:.4f}  lr {stepped.lr:.2e}",
                    flush=True,
                )
    finally:
        for handle in (*t_handles, *s_handles):
            handle.remove()
    tokenizer_dir = Path(child_dir) if (Path(child_dir) / "tokenizer_config.json").is_file() else None
    export_hf_checkpoint(
        student, child_arch, out_dir, progress=False, tokenizer_dir=tokenizer_dir, source_dir=Path(child_dir)
    )
    return result


def _distill_worker(
    rank: int,
    parent_dir: str,
    child_dir: str,
    tokens: torch.Tensor,
    out_dir: str,
    settings: DistillSettings,
    num_layers: int,
) -> DistillResult:
    del rank  # the launcher's environment variables carry it
    from nemotron_plugins.runtime.distributed import distributed_context

    with distributed_context(settings.parallel_config(num_layers), seed=settings.seed):
        return distill(parent_dir, child_dir, tokens, out_dir, settings)


def run_distill(
    parent_dir: str | os.PathLike[str],
    child_dir: str | os.PathLike[str],
    tokens: torch.Tensor,
    out_dir: str | os.PathLike[str],
    settings: DistillSettings,
    *,
    timeout_s: float = 3600.0,
) -> DistillResult:
    """:func:`distill` with its process group: in this process for one rank (or inside a launcher's group), else
    ``TP x PP x DP`` local processes (gloo on CPU).

    The settings are checked against the token count and the child's layer count before any process starts.

    Raises:
        DistillError: Settings that cannot run, naming the setting.
        RunSetupError: The child checkpoint has no readable ``config.json``.
    """
    from nemotron_plugins.runtime.distributed import ensure_distributed, get_context, run_local_processes
    from nemotron_plugins.training.setup import load_architecture

    if tokens.ndim != 2:
        raise DistillError(f"tokens must be [n, seq], got shape {tuple(tokens.shape)}")
    settings.validate(int(tokens.shape[0]))
    num_layers = load_architecture(_recipe(Path(child_dir), settings, int(tokens.shape[1]))).num_hidden_layers
    settings.validate(int(tokens.shape[0]), num_layers)
    torch.set_num_threads(settings.torch_threads)
    if settings.world_size == 1 or get_context() is not None or "RANK" in os.environ:
        with ensure_distributed(settings.parallel_config(num_layers), seed=settings.seed):
            return distill(parent_dir, child_dir, tokens, out_dir, settings)
    results = run_local_processes(
        _distill_worker,
        settings.world_size,
        (str(parent_dir), str(child_dir), tokens, str(out_dir), dataclasses.replace(settings), num_layers),
        timeout_s=timeout_s,
        threads_per_process=settings.torch_threads,
    )
    return results[0]
