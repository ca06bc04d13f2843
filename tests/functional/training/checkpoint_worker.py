"""Tiny Puzzle training runs that save / resume through nemotron_plugins.training.checkpointing (the worker of the
checkpoint tests and of benchmarks/checkpoint_io.py).

Each run: megatron-core ``GPTModel`` from :func:`~nemotron_plugins.puzzle.model.build_puzzle_model`, megatron DDP,
megatron's optimizer (distributed or not) and ``OptimizerParamScheduler``, a few real steps on megatron's schedule
(:func:`nemotron_plugins.training.step.optimizer_step`). The data of a step is drawn from a generator seeded by the
data position (``state["sample"]``), so an exact resume needs weights, moments, main params, scheduler and data
position restored; ``rng_probe`` checks the per-rank RNG states separately (a draw right after the save and right
after the load must agree).
"""

from __future__ import annotations

import hashlib
from typing import Any

SEQ = 16
GLOBAL_BATCH = 4
VOCAB = 128


def _arch(kind: str) -> Any:
    """``"recipe"``: recipes/configs/tiny-puzzle-cpu.json (has a 1-KV-head layer: TP1 only); ``"tp"``: the tiny
    config whose KV heads (4, 2) split over TP2; ``"dense:<hidden>:<layers>"``: a dense Llama-style config."""
    from pathlib import Path

    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    if kind == "recipe":
        import json

        from nemotron_plugins.puzzle.block_config import parse_hf_config

        path = Path(__file__).resolve().parents[3] / "recipes" / "configs" / "tiny-puzzle-cpu.json"
        return parse_hf_config(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    if kind == "tp":
        return tiny_puzzle_config(VOCAB, max_position_embeddings=64)
    if kind.startswith("dense:"):
        from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config

        _, hidden, layers = kind.split(":")
        hidden, layers = int(hidden), int(layers)
        block = BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(hidden * 4))
        return make_config(
            hidden_size=hidden,
            num_attention_heads=8,
            blocks=[block] * layers,
            vocab_size=1024,
            max_position_embeddings=64,
        )
    raise ValueError(f"unknown arch kind {kind!r}")


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Initialise distributed at ``spec``'s layout and build model, optimizer and scheduler."""
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed

    parallel = ParallelConfig(
        tensor_model_parallel_size=spec.get("tp", 1), pipeline_model_parallel_size=spec.get("pp", 1)
    )
    ctx = init_distributed(parallel, seed=spec.get("seed", 1234))
    arch = _arch(spec.get("arch", "recipe"))
    model = build_puzzle_model(arch, parallel=parallel, seq_length=SEQ, perform_initialization=False, device="cpu")
    init_weights_layout_invariant_(model, seed=spec.get("init_seed", 7))
    mconfig = model.config
    mconfig.calculate_per_token_loss = True
    mconfig.finalize_model_grads_func = None
    if ps.get_pipeline_model_parallel_world_size() > 1:
        mconfig.pipeline_dtype = torch.float32
    dist_opt = bool(spec.get("dist_opt", False))
    ddp = DistributedDataParallel(
        config=mconfig,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=dist_opt
        ),
        module=model,
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=3e-3,
            min_lr=3e-4,
            weight_decay=0.01,
            clip_grad=1.0,
            bf16=False,
            params_dtype=torch.float32,
            use_distributed_optimizer=dist_opt,
        ),
        [ddp],
    )
    sched = OptimizerParamScheduler(
        opt,
        init_lr=0.0,
        max_lr=3e-3,
        min_lr=3e-4,
        lr_warmup_steps=2,
        lr_decay_steps=20,
        lr_decay_style="cosine",
        start_wd=0.01,
        end_wd=0.01,
        wd_incr_steps=20,
        wd_incr_style="constant",
    )
    return {"ctx": ctx, "model": [ddp], "optimizer": opt, "scheduler": sched, "arch": arch}


def train_step(run: dict[str, Any], state: dict[str, Any]) -> float:
    """One optimizer step on a global batch drawn from the torch RNG; returns the global mean token loss."""
    import torch

    from nemotron_plugins.training.step import optimizer_step

    ctx = run["ctx"]
    # The data position lives in ``state`` (saved with the checkpoint), as a real sampler's would.
    generator = torch.Generator().manual_seed(1000 + state["sample"])
    tokens = torch.randint(0, VOCAB - 1, (GLOBAL_BATCH, SEQ + 1), generator=generator)
    state["sample"] += GLOBAL_BATCH
    per_rank = GLOBAL_BATCH // ctx.dp_size
    mine = tokens[ctx.dp_rank * per_rank : (ctx.dp_rank + 1) * per_rank]
    global_tokens = float(GLOBAL_BATCH * SEQ)
    micro = [
        {
            "tokens": mine[i : i + 1, :-1].contiguous(),
            "labels": mine[i : i + 1, 1:].contiguous(),
            "position_ids": torch.arange(SEQ).unsqueeze(0),
        }
        for i in range(per_rank)
    ]

    def forward_step(data_iterator: Any, model_: Any) -> tuple[Any, Any]:
        batch = next(data_iterator)
        output = model_(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])

        def loss_func(output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            loss_sum = output_tensor.float().sum()
            return loss_sum / global_tokens, torch.tensor(SEQ), {"loss_sum": loss_sum.detach()}

        return output, loss_func

    result = optimizer_step(
        run["model"], run["optimizer"], run["scheduler"], micro, forward_step, seq_length=SEQ, micro_batch_size=1
    )
    loss_sum = torch.zeros((), dtype=torch.float64)
    if ctx.is_last_stage and ctx.tp_rank == 0:
        loss_sum += sum(float(r["loss_sum"]) for r in result.reports)
    if ctx.world_size > 1:
        torch.distributed.all_reduce(loss_sum)
    return loss_sum.item() / global_tokens


def param_digest(run: dict[str, Any]) -> str:
    """SHA-256 of this rank's model parameters and optimizer main params / moments (exact-equality check)."""
    import torch

    h = hashlib.sha256()
    for name, param in sorted(run["model"][0].module.named_parameters()):
        h.update(name.encode())
        h.update(param.detach().contiguous().view(torch.uint8).numpy().tobytes())
    opt = run["optimizer"]
    inner = getattr(opt, "chained_optimizers", [opt])
    for o in inner:
        for group in o.optimizer.param_groups:
            for p in group["params"]:
                h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
                for key in ("exp_avg", "exp_avg_sq"):
                    t = o.optimizer.state.get(p, {}).get(key)
                    if t is not None:
                        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def full_params(run: dict[str, Any]) -> dict[str, Any]:
    """Every parameter as a full (TP-gathered) numpy array keyed by its global name (this rank's PP stage)."""
    import torch
    from megatron.core import parallel_state as ps

    from nemotron_plugins.puzzle.model import global_parameter_name

    inner = run["model"][0].module
    out = {}
    tp = ps.get_tensor_model_parallel_world_size()
    for name, param in inner.named_parameters():
        t = param.detach()
        if tp > 1 and getattr(param, "tensor_model_parallel", False):
            parts = [torch.empty_like(t) for _ in range(tp)]
            torch.distributed.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
            t = torch.cat(parts, dim=param.partition_dim)
        out[global_parameter_name(inner, name)] = t.numpy().copy()
    return out


def session(rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One run: optionally load from ``spec["load"]``, train ``spec["steps"]`` steps, saving after step numbers in
    ``spec["save_at"]`` to ``spec["root"]``. Returns losses by step number, the digest and the load report."""
    import torch

    from nemotron_plugins.training.checkpointing import load_checkpoint, save_checkpoint

    run = build(spec)
    state = {"step": 0, "sample": 0}
    out: dict[str, Any] = {"losses": {}, "loaded": None}
    if spec.get("load"):
        info = load_checkpoint(
            spec["load"], model=run["model"], optimizer=run["optimizer"], scheduler=run["scheduler"]
        )
        state = dict(info["state"])
        out["loaded"] = {k: v for k, v in info.items() if k in ("step", "layout", "resharded", "state")}
        gen_state = torch.get_rng_state()
        out["rng_after_load"] = torch.rand(4).tolist()
        torch.set_rng_state(gen_state)
    for _ in range(spec.get("steps", 0)):
        out["losses"][state["step"]] = train_step(run, state)
        state["step"] += 1
        if state["step"] in spec.get("save_at", ()):
            save_checkpoint(
                spec["root"],
                state["step"],
                model=run["model"],
                optimizer=run["optimizer"],
                scheduler=run["scheduler"],
                state=state,
                keep_last=spec.get("keep_last", 2),
                config={"spec": {k: v for k, v in spec.items() if isinstance(v, (int, str, bool))}},
            )
            if spec.get("rng_probe"):
                gen_state = torch.get_rng_state()
                out.setdefault("rng_after_save", {})[state["step"]] = torch.rand(4).tolist()
                torch.set_rng_state(gen_state)
    out["digest"] = param_digest(run)
    if spec.get("full_params"):
        out["params"] = full_params(run)
    return out


def phases(rank: int, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run several :func:`session` phases in this process group, each at its own layout (megatron's parallel state
    is rebuilt between phases; the torch process group stays), so one launch covers several resume cases."""
    import torch

    from nemotron_plugins.runtime.distributed import destroy_distributed

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", init_method="env://")
    results = []
    for spec in specs:
        try:
            results.append(session(rank, spec))
        finally:
            destroy_distributed()
    return results


def retention(rank: int, root: str) -> dict[str, Any]:
    """keep-last-N, re-saving an existing step, metadata and ``latest`` on a real 1-rank megatron run."""
    import json
    from pathlib import Path

    from nemotron_plugins.training.checkpointing import (
        latest_checkpoint,
        list_checkpoints,
        load_checkpoint,
        save_checkpoint,
    )

    run = build({"arch": "recipe"})
    state = {"step": 0, "sample": 0}
    seen: dict[str, Any] = {"lists": []}
    for step in (1, 2, 3):
        train_step(run, state)
        state["step"] = step
        save_checkpoint(root, step, model=run["model"], optimizer=run["optimizer"], state=state, keep_last=2)
        seen["lists"].append(list_checkpoints(root))
    seen["latest"] = latest_checkpoint(root)
    seen["entries"] = sorted(p.name for p in Path(root).iterdir())
    # Re-save step 3 with other weights: the new copy replaces the old one.
    train_step(run, state)
    state["marker"] = "resaved"
    save_checkpoint(root, 3, model=run["model"], optimizer=run["optimizer"], state=state, keep_last=2)
    seen["after_resave"] = sorted(p.name for p in Path(root).iterdir())
    digest_saved = param_digest(run)
    train_step(run, dict(state))  # move away, then load back
    info = load_checkpoint(root, model=run["model"], optimizer=run["optimizer"])
    seen["loaded_state"] = info["state"]
    seen["digest_equal"] = param_digest(run) == digest_saved
    seen["metadata"] = json.loads((Path(root) / "iter_0000003" / "checkpoint.json").read_text())
    seen["latest_text"] = (Path(root) / "latest").read_text()
    return seen


def kill_child(root: str, point: str) -> None:
    """Child process of the kill test: save steps 1 and 2, then save again (a new step 3, or step 2 again for
    ``between_renames``) with ``NEMOTRON_CHECKPOINT_CRASH_AT=point``, so the process SIGKILLs itself there."""
    import os

    from nemotron_plugins.runtime.checkpoint import CRASH_ENV
    from nemotron_plugins.training.checkpointing import save_checkpoint

    run = build({"arch": "recipe"})
    state = {"step": 0, "sample": 0}
    for step in (1, 2):
        train_step(run, state)
        state["step"] = step
        save_checkpoint(root, step, model=run["model"], optimizer=run["optimizer"], state=state, keep_last=2)
    os.environ[CRASH_ENV] = point
    step = 2 if point == "between_renames" else 3
    state["step"] = step
    save_checkpoint(root, step, model=run["model"], optimizer=run["optimizer"], state=state, keep_last=1)
    raise SystemExit(3)  # not reached when the crash point fires


def verify_killed(rank: int, roots: dict[str, str]) -> dict[str, Any]:
    """After the kill children died: in each save root, what ``latest`` names, which checkpoints are complete, what
    loads (step, weight digest), and what a clean save afterwards leaves."""
    from pathlib import Path

    from nemotron_plugins.training.checkpointing import (
        latest_checkpoint,
        list_checkpoints,
        load_checkpoint,
        save_checkpoint,
    )

    run = build({"arch": "recipe", "init_seed": 99})
    out = {}
    for point, root in roots.items():
        record: dict[str, Any] = {
            "latest": latest_checkpoint(root),
            "steps": list_checkpoints(root),
            "entries": sorted(p.name for p in Path(root).iterdir()),
        }
        info = load_checkpoint(root, model=run["model"], optimizer=run["optimizer"])
        record["loaded_step"] = info["step"]
        record["loaded_state_step"] = info["state"]["step"]
        record["digest"] = param_digest(run)
        save_checkpoint(root, info["step"], model=run["model"], optimizer=run["optimizer"], state=info["state"])
        record["entries_after_clean_save"] = sorted(p.name for p in Path(root).iterdir())
        out[point] = record
    return out


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["kill"]:
        kill_child(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m tests.functional.training.checkpoint_worker kill ROOT POINT")
