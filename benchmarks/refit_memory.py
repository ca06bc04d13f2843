"""Memory of a weight refit: the bucketed stream (``nemotron_plugins.rl.refit``) next to materialising every HF tensor
at once (what the old vLLM engine did: ``list(megatron_to_hf_weights(...))``), measured in the same run.

Run: ``python benchmarks/refit_memory.py [--hidden 1024] [--layers 8] [--bucket-mb 64]`` (it re-executes itself
with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set).

Part 1 (measured, CPU, one process): a heterogeneous Puzzle model (GQA with per-layer KV heads, a linear attention,
a no-op FFN, SwiGLU widths the export pads) in fp32; the "engine" is a preallocated bf16 copy of the exported tensors
(as vLLM holds them), so both ways write into the same memory and differ only in what they hold in flight. Peak is
the process's resident set size sampled every 2 ms during the refit minus the RSS before it. Also prints the time.

Part 2 (computed from the configs, no model built): per-GPU refit memory of the paper-scale fixtures at PP18 in bf16:
the old engine's whole stage vs the stream's largest bucket and its peak (bucket + one tensor's TP gather).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

import torch


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread; ``peak - start`` is what the measured block needed."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def measured(hidden: int, layers: int, bucket_mb: int) -> None:
    from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.rl.refit import plan_refit, stream_hf_weights
    from nemotron_plugins.runtime.distributed import distributed_context

    kinds = [
        BlockConfig(attention=AttentionConfig.gqa(8), ffn=FFNConfig.swiglu(hidden * 3)),
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(hidden * 2 + 96)),
        BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.swiglu(hidden * 4)),
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.no_op()),
    ]
    cfg = make_config(
        hidden_size=hidden,
        num_attention_heads=16,
        vocab_size=32000,
        blocks=[kinds[i % len(kinds)] for i in range(layers)],
        max_position_embeddings=256,
    )
    with distributed_context():
        model = build_puzzle_model(cfg, device="cpu", perform_initialization=False)
        bucket_bytes = bucket_mb << 20
        plan = plan_refit(model, config=cfg, bucket_bytes=bucket_bytes, dtype=torch.bfloat16)
        engine = {
            n: torch.empty(s, dtype=torch.bfloat16)
            for b in plan.buckets
            for u in b
            for n, s in zip(u.names, u.shapes, strict=True)
        }
        with torch.no_grad():
            for t in [*engine.values(), *model.parameters()]:
                t.zero_()  # touch the pages: model and engine memory are resident before either refit
        rows = []

        with PeakRSS() as peak:
            t0 = time.perf_counter()
            everything = [
                (n, t)
                for b in stream_hf_weights(model, config=cfg, bucket_bytes=1 << 62, dtype=torch.bfloat16)
                for n, t in b
            ]
            for name, tensor in everything:
                engine[name].copy_(tensor)
            del everything, name, tensor
            rows.append(("whole model at once (old engine)", peak, time.perf_counter() - t0))

        with PeakRSS() as peak:
            t0 = time.perf_counter()
            for bucket in stream_hf_weights(model, config=cfg, bucket_bytes=bucket_bytes, dtype=torch.bfloat16):
                for name, tensor in bucket:
                    engine[name].copy_(tensor)
                del bucket, name, tensor
            rows.append((f"stream, {bucket_mb} MiB buckets", peak, time.perf_counter() - t0))

    mb = 2**20
    print(
        f"\nmeasured: hidden {hidden}, {layers} layers, {plan.total_nbytes / mb:.0f} MiB of bf16 HF tensors; largest "
        f"bucket {plan.max_bucket_nbytes / mb:.1f} MiB in {len(plan.buckets)} buckets"
    )
    print(f"{'refit':<36} {'peak RSS above start (MiB)':>27} {'time (s)':>9}")
    for label, peak, seconds in rows:
        print(f"{label:<36} {(peak.peak - peak.start) / mb:>27.1f} {seconds:>9.2f}")


def computed(pp: int, bucket_mb: int) -> None:
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import expected_hf_tensors, hf_export_layout

    root = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "puzzle"
    gib = 2**30
    print(f"\ncomputed: bf16, PP{pp} (even split), {bucket_mb} MiB buckets, per GPU")
    print(f"{'config':<36} {'old: whole stage':>17} {'stream: bucket':>15} {'stream: peak':>13}")
    for name in ("ultra-253b-like", "llama-3_3-nemotron-super-49b-v1"):
        cfg = load_hf_config(root / f"{name}.json")
        nbytes = {n: math.prod(s) * 2 for n, s in expected_hf_tensors(hf_export_layout(cfg).export_cfg).items()}
        per = -(-cfg.num_hidden_layers // pp)
        stage = [0] * pp
        groups: dict[str, int] = {}
        for n, v in nbytes.items():
            m = re.match(r"model\.layers\.(\d+)\.", n)
            stage[int(m.group(1)) // per if m else (0 if "embed" in n else pp - 1)] += v
            key = re.sub(r"\.(q|k|v)_proj\.", ".qkv.", n)  # the stream's units: q / k / v together, the rest alone
            groups[key] = groups.get(key, 0) + v
        unit = max(groups.values())
        bucket = max(bucket_mb << 20, unit)
        print(f"{name:<36} {max(stage) / gib:>13.2f} GiB {bucket / gib:>11.2f} GiB {(bucket + unit) / gib:>9.2f} GiB")


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Fixed mmap threshold: every freed tensor goes back to the OS, so the RSS peak of the second measurement is
        # not hidden by memory the allocator kept from the first (glibc's threshold otherwise grows after frees).
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--pp", type=int, default=18)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    measured(args.hidden, args.layers, args.bucket_mb)
    computed(args.pp, 512)


if __name__ == "__main__":
    main()
