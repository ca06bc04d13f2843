"""One rank of the refit tests (gloo, CPU): load a fixed HF checkpoint into the Megatron model at a TP x PP layout,
stream it back with :func:`nemotron_plugins.rl.refit.stream_hf_weights`, export it, and run the Megatron forward.

Everything a rank returns is small CPU data for the parent test to compare.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch

INPUT_SEQ = 9
PADDED_VOCAB = 64


def input_ids(vocab: int) -> torch.Tensor:
    """The fixed prompt batch every layout runs."""
    return torch.randint(0, vocab, (2, INPUT_SEQ), generator=torch.Generator().manual_seed(7))


def _forward(model: Any, ids: torch.Tensor, hidden: int) -> torch.Tensor | None:
    """Full-vocabulary logits on the last stage's TP rank 0 (``None`` elsewhere): hidden states sent stage to
    stage, vocab-parallel logits gathered over TP."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():
            recv = torch.empty(ids.shape[1], ids.shape[0], hidden)
            dist.recv(recv, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(recv)
        out = model(ids, pos, attention_mask=None)
        if not ps.is_pipeline_last_stage():
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            return None
        tp = ps.get_tensor_model_parallel_world_size()
        if tp > 1:
            parts = [torch.empty_like(out) for _ in range(tp)]
            dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
            out = torch.cat(parts, dim=-1)
    return out if ps.get_tensor_model_parallel_rank() == 0 else None


def _param_storages(model: Any) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


def stream_and_watch(model: Any, cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """Consume the stream the way an engine does (one bucket at a time, dropped after loading) and record what the
    memory bound is made of: each bucket's bytes, and whether any tensor the stream created for an earlier bucket is
    still alive when the next bucket arrives (it must not be: the stream keeps no reference to handed-out buckets)."""
    from nemotron_plugins.rl.refit import plan_refit, stream_hf_weights

    plan = plan_refit(model, config=cfg, **kwargs)
    params = _param_storages(model)
    state: dict[str, torch.Tensor] = {}
    bucket_bytes: list[int] = []
    leaked = 0
    previous: list[weakref.ref] = []
    for bucket in stream_hf_weights(model, config=cfg, **kwargs):
        gc.collect()
        leaked += sum(ref() is not None for ref in previous)
        bucket_bytes.append(sum(t.numel() * t.element_size() for _, t in bucket))
        for name, tensor in bucket:
            state[name] = tensor.clone()  # the test keeps a copy; the stream's own tensors are dropped below
        previous = [weakref.ref(t) for _, t in bucket if t.untyped_storage().data_ptr() not in params]
        del bucket, tensor
    return {
        "state": state,
        "bucket_bytes": bucket_bytes,
        "plan_bucket_bytes": plan.bucket_nbytes,
        "plan_names": plan.names,
        "max_bucket": plan.max_bucket_nbytes,
        "largest_unit": max(u.nbytes for b in plan.buckets for u in b),
        "leaked": leaked,
    }


def worker(rank: int, tp: int, pp: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each job (``src``: HF checkpoint dir, ``out``: export dir, ``bucket_bytes``, ``engine_tp``): load the
    checkpoint at TP x PP, stream whole tensors and per-engine-TP slices, export, forward."""
    from megatron.core import parallel_state as ps

    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint, load_hf_checkpoint
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.rl.refit import stream_hf_weights
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp), seed=100)
    results = []
    for job in jobs:
        cfg = load_hf_config(job["src"])
        model = build_puzzle_model(cfg, make_vocab_size_divisible_by=PADDED_VOCAB, device="cpu").eval()
        report = load_hf_checkpoint(model, job["src"], cfg, progress=False)
        assert report.loaded and not report.unfilled_model, report
        whole = stream_and_watch(model, cfg, bucket_bytes=job["bucket_bytes"])
        # Same slice on every rank of a pipeline group (engine TP = training TP): only slices cross stages.
        same = stream_and_watch(
            model, cfg, bucket_bytes=job["bucket_bytes"], tp_shard=(ps.get_tensor_model_parallel_rank(), tp)
        )
        # A different slice on every rank (engine TP = world size): whole tensors cross stages, each rank cuts.
        world = torch.distributed.get_world_size()
        own = {
            n: t.clone()
            for b in stream_hf_weights(model, config=cfg, bucket_bytes=job["bucket_bytes"], tp_shard=(rank, world))
            for n, t in b
        }
        bf16 = {n: t.dtype for b in stream_hf_weights(model, config=cfg, dtype="bfloat16") for n, t in b}
        export_hf_checkpoint(model, cfg, job["out"], max_shard_size="24KB", progress=False)
        results.append(
            {
                "whole": whole,
                "same_slice": same,
                "world_slice": own,
                "bf16_dtypes": set(bf16.values()),
                "logits": _forward(model, input_ids(cfg.vocab_size), cfg.hidden_size),
                "stage": ps.get_pipeline_model_parallel_rank(),
                "tp_rank": ps.get_tensor_model_parallel_rank(),
            }
        )
    return results


def engine_worker(rank: int, tp: int, pp: int, gen_tp: int, src: str, bucket_bytes: int) -> dict[str, Any]:
    """Train-side layout TP x PP, generation at TP ``gen_tp`` through the ``vllm`` engine on the recording stand-in:
    refit from this rank's Megatron shards, then generate this engine's share of the prompts."""
    from unittest import mock

    from refit_fake_vllm import fake_vllm

    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import load_hf_checkpoint
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.rl.engines.vllm_engine import VLLMRolloutEngine
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp), seed=100)
    cfg = load_hf_config(src)
    model = build_puzzle_model(cfg, make_vocab_size_divisible_by=PADDED_VOCAB, device="cpu").eval()
    load_hf_checkpoint(model, src, cfg, progress=False)
    prompts = [[10 + i, 11 + i, 12 + i] for i in range(5)]
    with fake_vllm() as llm_cls, mock.patch.object(torch.cuda, "is_available", return_value=True):
        engine = VLLMRolloutEngine(
            model_path=src, puzzle_config=cfg, tensor_parallel_size=gen_tp, refit_bucket_bytes=bucket_bytes
        )
        report = engine.update_weights(model=model)
        peers = torch.distributed.get_process_group_ranks(engine.layout.peer_group())
        mine = [prompts[i] for i in engine.layout.shard(len(prompts))]
        groups = engine.rollout(mine, n=2, max_new_tokens=4)
    (llm,) = llm_cls.instances
    return {
        "layout": (engine.layout.tp_rank, engine.layout.dp_rank, engine.layout.dp_size),
        "vllm_view": (llm.tp_rank, llm.dp_rank),
        "peers": peers,
        "kwargs": llm.kwargs,
        "full": llm.model.full,
        "shard": llm.model.shard,
        "bucket_bytes": [e[2] for e in llm.events if e[0] == "load_weights"],
        "report": (report.tensors, report.buckets, report.max_bucket_bytes),
        "generated_prompts": [p for e in llm.events if e[0] == "generate" for p in e[1]],
        "groups": len(groups),
        "events": [e[0] for e in llm.events],
    }
