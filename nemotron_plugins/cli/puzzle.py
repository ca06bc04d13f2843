"""``nemotron-plugins puzzle ...``: inspect heterogeneous (Puzzle) architectures and run the Puzzle search.

``puzzle describe CONFIG.json [--json] [--seq-len N] [--dtype-bytes B]`` prints a per-layer table (attention kind
and KV heads, FFN kind and width, parameters, KV-cache bytes per token) with totals, or one JSON object.

The search stages, each writing a resumable artefact into a run directory (``nemotron_plugins.puzzle.search.
rundir``; an existing artefact is reused unless ``--force``):

``puzzle library PARENT RUN --calibration TOKENS``, ``puzzle bld RUN --tokens TOKENS``, ``puzzle score RUN --held-out TOKENS``,
``puzzle search RUN (--param-fraction F | --memory-bytes B | --latency-s S | --throughput T)``,
``puzzle realize RUN``, ``puzzle distill RUN --tokens TOKENS [--steps N --tensor-parallel T --pipeline-parallel P ...]``,
``puzzle fuse CHECKPOINT OUT --calibration TOKENS --threshold D``.
``library``, ``bld`` and ``score`` run on Megatron Puzzle models and take ``--tensor-parallel T --pipeline-parallel P
--data-parallel D`` (``T x P x D`` local gloo processes, or the ranks of a ``torchrun`` group; rank 0 writes the run
directory; each pipeline stage builds and runs only its own consecutive layers). ``distill`` trains on megatron's
schedules at ``--tensor-parallel T --pipeline-parallel P --data-parallel D`` (parent and child split into the same
stages; each stage's hidden-state cosine terms are an auxiliary loss of its output, the KL is on the last stage).
Token files are ``.pt`` / ``.npy`` / ``.json`` integer arrays ``[batch, seq]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from nemotron_plugins.cli.common import fail

if TYPE_CHECKING:
    from nemotron_plugins.puzzle.block_config import PuzzleModelConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``puzzle`` group."""
    parser = subparsers.add_parser("puzzle", help="inspect heterogeneous (Puzzle) architectures")
    sub = parser.add_subparsers(dest="puzzle_command", metavar="SUBCOMMAND")
    describe = sub.add_parser(
        "describe",
        help="per-layer architecture, parameters, KV cache and FLOPs of a config.json",
        description="Validate a DeciLM / puzzletron config.json (or checkpoint directory) and print its per-layer "
        "architecture and cost.",
    )
    describe.add_argument("config", help="config.json file or a checkpoint directory containing one")
    describe.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    describe.add_argument(
        "--seq-len", type=int, default=None, help="keys attended per token for the attention FLOPs (default 4096)"
    )
    describe.add_argument("--dtype-bytes", type=int, default=2, help="bytes per KV-cache element (default 2, bf16)")
    describe.set_defaults(func=run_describe)

    lib = sub.add_parser("library", help="stage 1: child blocks from a parent HF checkpoint")
    lib.add_argument("parent", help="parent HF checkpoint directory")
    lib.add_argument("run", help="run directory")
    lib.add_argument("--calibration", required=True, help="token ids for the FFN channel contributions")
    lib.add_argument("--ffn-fractions", default="1.0,0.75,0.5,0.25", help="FFN widths as fractions of the parent's")
    lib.add_argument("--kv-heads", default=None, help="KV-head counts to pool to (default: divisors of the parent's)")
    lib.add_argument("--force", action="store_true", help="rebuild even when the library exists")
    _add_parallel(lib)
    lib.set_defaults(func=run_library)

    bld = sub.add_parser("bld", help="stage 2: decoupled blockwise local distillation of the library")
    bld.add_argument("run", help="run directory (after `puzzle library`)")
    bld.add_argument("--tokens", required=True, help="training token ids (kept apart from the held-out ones)")
    bld.add_argument("--epochs", type=int, default=1)
    bld.add_argument("--batch-size", type=int, default=8)
    bld.add_argument("--lr", type=float, default=1e-3)
    bld.add_argument("--seed", type=int, default=0, help="batch-order seed")
    bld.add_argument("--force", action="store_true")
    _add_parallel(bld)
    bld.set_defaults(func=run_bld)

    score = sub.add_parser("score", help="stage 3: replace-1-block KL to the parent and per-block cost")
    score.add_argument("run", help="run directory (after `puzzle library`)")
    score.add_argument("--held-out", required=True, help="held-out token ids")
    score.add_argument("--metric", choices=("kl", "lm_loss"), default="kl")
    score.add_argument("--batch-sizes", default="1", help="batch sizes to measure runtimes at (comma-separated)")
    score.add_argument("--seq-len", type=int, default=128, help="sequence length of the runtime measurement")
    score.add_argument("--force", action="store_true")
    _add_parallel(score)
    score.set_defaults(func=run_score)

    srch = sub.add_parser(
        "search",
        help="stage 4: the exact MIP (LP bound + enumeration, HiGHS fallback) under memory / latency / throughput limits",
    )
    srch.add_argument("run", help="run directory (after `puzzle score`)")
    srch.add_argument(
        "--param-fraction", type=float, default=None, help="parameter budget as a fraction of the parent"
    )
    srch.add_argument("--memory-bytes", type=float, default=None, help="weights (bf16) + KV cache limit")
    srch.add_argument("--latency-s", type=float, default=None, help="summed block runtime limit")
    srch.add_argument("--throughput", type=float, default=None, help="minimum tokens/s")
    srch.add_argument("--batch-size", type=int, default=1)
    srch.add_argument("--seq-len", type=int, default=128)
    srch.add_argument("--num-solutions", type=int, default=1)
    srch.add_argument("--min-layer-difference", type=int, default=1)
    srch.add_argument("--force", action="store_true")
    srch.set_defaults(func=run_search)

    real = sub.add_parser("realize", help="stage 5: the chosen child as an HF checkpoint plus a report")
    real.add_argument("run", help="run directory (after `puzzle search`)")
    real.add_argument("--solution", type=int, default=0, help="which solution (0: the best)")
    real.add_argument("--force", action="store_true")
    real.set_defaults(func=run_realize)

    dist = sub.add_parser(
        "distill",
        help="stage 6: global knowledge distillation of the child from the parent (hidden-state cosine + logit KL)",
        description="Train the realized child to imitate the parent on the megatron training stack (TP / PP / DP; "
        "gloo processes on CPU) and write it as an HF checkpoint.",
    )
    dist.add_argument("run", help="run directory (after `puzzle realize`)")
    dist.add_argument("--tokens", required=True, help="training token ids (kept apart from the held-out ones)")
    dist.add_argument("--child", default=None, help="child HF checkpoint (default RUN/child)")
    dist.add_argument("--out", default=None, help="distilled checkpoint directory (default RUN/child_distilled)")
    dist.add_argument("--steps", type=int, default=100)
    dist.add_argument("--global-batch-size", type=int, default=8)
    dist.add_argument("--micro-batch-size", type=int, default=4)
    dist.add_argument("--lr", type=float, default=1e-4)
    dist.add_argument("--min-lr", type=float, default=0.0)
    dist.add_argument("--warmup-steps", type=int, default=0)
    dist.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="cosine")
    dist.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    dist.add_argument("--kl-weight", type=float, default=1.0, help="weight of KL(parent || child) on the logits")
    dist.add_argument("--cosine-weight", type=float, default=1.0, help="weight of 1 - cos on every layer's output")
    dist.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the KL term")
    dist.add_argument("--tensor-parallel", type=int, default=1, help="TP size")
    dist.add_argument(
        "--pipeline-parallel",
        type=int,
        default=1,
        help="PP size: parent and child split into the same stages of consecutive layers (at most the layer count; "
        "the first stages one layer longer when it does not divide); the parent runs megatron's forward-only "
        "pipeline schedule, the child its 1F1B schedule, each stage adding its layers' cosine terms",
    )
    dist.add_argument("--data-parallel", type=int, default=1, help="DP size (TP x PP x DP local processes)")
    dist.add_argument("--sequence-parallel", action="store_true", help="megatron sequence parallelism (TP > 1)")
    dist.add_argument("--seed", type=int, default=0)
    dist.add_argument("--threads", type=int, default=1, help="torch threads per process")
    dist.add_argument("--force", action="store_true")
    dist.set_defaults(func=run_distill)

    fuse = sub.add_parser("fuse", help="stage 7: FFN Fusion plan (dependency metric) and the fused checkpoint")
    fuse.add_argument("checkpoint", help="HF checkpoint to fuse")
    fuse.add_argument("out", help="output directory (fused checkpoint + fusion_plan.json)")
    fuse.add_argument("--calibration", required=True, help="token ids for the dependency metric")
    fuse.add_argument("--threshold", type=float, default=0.05, help="largest cosine distance inside a fused group")
    fuse.add_argument("--plan-only", action="store_true", help="write the plan, not the checkpoint")
    fuse.set_defaults(func=run_fuse)


def _add_parallel(parser: argparse.ArgumentParser) -> None:
    """The Megatron layout of a search stage (stages 1-3; ``torchrun`` or local gloo processes for > 1 rank)."""
    group = parser.add_argument_group("parallelism (Megatron models; TP x PP x DP processes)")
    group.add_argument("--tensor-parallel", type=int, default=1, help="TP size of the Megatron models")
    group.add_argument(
        "--pipeline-parallel",
        type=int,
        default=1,
        help="PP size: each model split into this many stages of consecutive layers (at most the layer count; "
        "the first stages one layer longer when it does not divide), run by megatron's forward-only pipeline schedule",
    )
    group.add_argument(
        "--data-parallel", type=int, default=1, help="DP size (TP x PP x DP local processes or torchrun)"
    )
    group.add_argument("--micro-batch-size", type=int, default=8, help="sequences per Megatron forward (micro-batch)")
    group.add_argument("--threads", type=int, default=1, help="torch threads per process")


def _search_parallel(args: argparse.Namespace, cfg: PuzzleModelConfig | None = None) -> object:
    """The layout of ``args``, validated (and checked against the parent ``cfg`` when given) before any process
    starts."""
    from nemotron_plugins.puzzle.search.parallel import SearchParallel, SearchParallelError

    settings = SearchParallel(
        tensor_model_parallel_size=args.tensor_parallel,
        data_parallel_size=args.data_parallel,
        pipeline_model_parallel_size=args.pipeline_parallel,
        micro_batch_size=args.micro_batch_size,
        torch_threads=args.threads,
    )
    try:
        settings.validate()
        if cfg is not None:
            settings.check_cfg(cfg)
    except SearchParallelError as err:
        fail(f"{settings.layout}: {err}")
    return settings


def _writes() -> bool:
    """Whether this process writes the run directory (rank 0 under ``torchrun``; the only process otherwise)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def run_describe(args: argparse.Namespace) -> int:
    """Print the architecture and cost of one config."""
    from nemotron_plugins.puzzle.block_config import BlockConfigError, load_hf_config
    from nemotron_plugins.puzzle.cost import DEFAULT_SEQ_LEN, estimate_cost

    seq_len = DEFAULT_SEQ_LEN if args.seq_len is None else args.seq_len
    if seq_len < 1:
        fail(f"--seq-len must be a positive integer, got {seq_len}")
    if args.dtype_bytes < 1:
        fail(f"--dtype-bytes must be a positive integer, got {args.dtype_bytes}")
    try:
        cfg = load_hf_config(args.config)
    except BlockConfigError as err:
        fail(str(err))
    cost = estimate_cost(cfg, seq_len=seq_len, dtype_bytes=args.dtype_bytes)

    if args.json:
        out = {
            "config": str(args.config),
            "field_style": cfg.field_style,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            **cost.to_dict(),
        }
        for layer, block in zip(out["layers"], cfg.blocks, strict=True):
            layer["ffn_fused_from"] = list(block.ffn.fused_from) if block.ffn.fused_from else None
        print(json.dumps(out, indent=2))
        return 0

    print(
        f"{args.config}: {cfg.field_style} style, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads x {cfg.head_dim}, vocab {cfg.vocab_size}"
        f"{', tied embeddings' if cfg.tie_word_embeddings else ''}"
    )
    header = f"{'layer':>5}  {'attention':<10}  {'ffn':<22}  {'params':>14}  {'KV B/tok':>8}  {'GFLOP/tok':>9}"
    print(header)
    print("-" * len(header))
    for layer, block in zip(cost.layers, cfg.blocks, strict=True):
        attn = f"gqa kv={layer.kv_heads}" if layer.attention_kind == "gqa" else layer.attention_kind
        if layer.ffn_kind == "swiglu":
            ffn = f"swiglu {layer.ffn_width}"
            if block.ffn.fused_from:
                ffn += f" (fused x{len(block.ffn.fused_from)})"
        else:
            ffn = layer.ffn_kind
        print(
            f"{layer.index:>5}  {attn:<10}  {ffn:<22}  {layer.params:>14,}  {layer.kv_cache_bytes_per_token:>8,}"
            f"  {layer.flops_per_token / 1e9:>9.3f}"
        )
    print("-" * len(header))
    kinds = [layer.attention_kind for layer in cost.layers]
    ffn_kinds = [layer.ffn_kind for layer in cost.layers]
    print(
        f"attention: {kinds.count('gqa')} gqa, {kinds.count('linear')} linear, {kinds.count('no_op')} no_op; "
        f"ffn: {ffn_kinds.count('swiglu')} swiglu, {ffn_kinds.count('linear')} linear, {ffn_kinds.count('no_op')} no_op"
    )
    print(f"embedding params:          {cost.embedding_params:>18,}")
    print(f"lm head params:            {cost.lm_head_params:>18,}{'  (tied)' if cfg.tie_word_embeddings else ''}")
    print(f"final norm params:         {cost.final_norm_params:>18,}")
    print(f"total params:              {cost.total_params:>18,}  ({_human(cost.total_params)})")
    print(f"KV cache bytes per token:  {cost.kv_cache_bytes_per_token:>18,}  ({args.dtype_bytes} bytes/element)")
    print(
        f"forward FLOPs per token:   {cost.flops_per_token:>18,}  ({_human(cost.flops_per_token)}, seq_len {seq_len})"
    )
    return 0


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{what} must be comma-separated integers, got {text!r}")


def _load_parent(path: str) -> tuple[object, dict]:
    import torch

    from nemotron_plugins.puzzle.block_config import BlockConfigError, load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict

    try:
        cfg = load_hf_config(path)
    except BlockConfigError as err:
        fail(str(err))
    weights = {k: v.to(torch.float32) for k, v in read_hf_state_dict(path).items()}
    return cfg, weights


def _run_meta(run: Path) -> dict:
    from nemotron_plugins.puzzle.search.rundir import read_json

    return read_json(run / "run.json", stage="library")


def run_library(args: argparse.Namespace) -> int:
    """Stage 1."""
    from nemotron_plugins.puzzle.hf_checkpoint import HFCheckpointError
    from nemotron_plugins.puzzle.model import PuzzleModelError
    from nemotron_plugins.puzzle.search.library import LibraryError
    from nemotron_plugins.puzzle.search.parallel import SearchParallelError, build_library_megatron, run_parallel
    from nemotron_plugins.puzzle.search.rundir import load_tokens, save_library, write_json
    from nemotron_plugins.runtime.distributed import DistributedError

    run = Path(args.run)
    if (run / "library" / "library.json").is_file() and not args.force:
        print(f"{run / 'library'} exists; reusing it (--force rebuilds)")
        return 0
    cfg, weights = _load_parent(args.parent)
    try:
        fractions = [float(v) for v in args.ffn_fractions.split(",")]
    except ValueError:
        fail(f"--ffn-fractions must be comma-separated numbers, got {args.ffn_fractions!r}")
    settings = _search_parallel(args, cfg)
    try:
        calibration = load_tokens(args.calibration, what="--calibration")
        variants = run_parallel(
            build_library_megatron,
            settings,
            (cfg, weights, calibration, settings),
            {"ffn_fractions": fractions, "kv_heads": _ints(args.kv_heads, "--kv-heads")},
        )
    except (
        LibraryError,
        SearchParallelError,
        DistributedError,
        HFCheckpointError,
        PuzzleModelError,
        FileNotFoundError,
        ValueError,
    ) as err:
        fail(str(err))
    if not _writes():
        return 0
    save_library(variants, run / "library")
    write_json(run / "run.json", {"parent": str(Path(args.parent).resolve())})
    print(
        f"library: {len(variants)} variants for {cfg.num_hidden_layers} layers ({settings.layout}) -> "
        f"{run / 'library'}"
    )
    return 0


def run_bld(args: argparse.Namespace) -> int:
    """Stage 2."""
    from nemotron_plugins.puzzle.hf_checkpoint import HFCheckpointError
    from nemotron_plugins.puzzle.model import PuzzleModelError
    from nemotron_plugins.puzzle.search.parallel import SearchParallelError, blockwise_distill_megatron, run_parallel
    from nemotron_plugins.puzzle.search.rundir import load_library, load_tokens, save_library, write_json
    from nemotron_plugins.runtime.distributed import DistributedError

    run = Path(args.run)
    if (run / "library_bld" / "library.json").is_file() and not args.force:
        print(f"{run / 'library_bld'} exists; reusing it (--force retrains)")
        return 0
    cfg, weights = _load_parent(_run_meta(run)["parent"])
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        fail(f"--lr must be > 0, got {args.lr}")
    settings = _search_parallel(args, cfg)
    try:
        tokens = load_tokens(args.tokens, what="--tokens")
        trained, losses = run_parallel(
            blockwise_distill_megatron,
            settings,
            (cfg, weights, load_library(run / "library"), tokens, settings),
            {"batch_size": args.batch_size, "epochs": args.epochs, "lr": args.lr, "seed": args.seed},
        )
    except (
        SearchParallelError,
        DistributedError,
        HFCheckpointError,
        PuzzleModelError,
        FileNotFoundError,
        ValueError,
    ) as err:
        fail(str(err))
    if not _writes():
        return 0
    save_library(trained, run / "library_bld")
    write_json(
        run / "bld.json",
        {"normalized_mse_first_last": losses, "tokens": tokens.numel(), "layout": settings.layout},
    )
    print(f"bld: {len(losses)} blocks trained on {tokens.numel()} tokens ({settings.layout}) -> {run / 'library_bld'}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    """Stage 3."""
    from nemotron_plugins.puzzle.hf_checkpoint import HFCheckpointError
    from nemotron_plugins.puzzle.model import PuzzleModelError
    from nemotron_plugins.puzzle.search.parallel import SearchParallelError, run_parallel, score_variants_megatron
    from nemotron_plugins.puzzle.search.rundir import load_library, load_tokens, write_json
    from nemotron_plugins.runtime.distributed import DistributedError

    run = Path(args.run)
    if (run / "scores.json").is_file() and not args.force:
        print(f"{run / 'scores.json'} exists; reusing it (--force recomputes)")
        return 0
    cfg, weights = _load_parent(_run_meta(run)["parent"])
    try:
        held_out = load_tokens(args.held_out, what="--held-out")
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    lib_dir = run / "library_bld" if (run / "library_bld" / "library.json").is_file() else run / "library"
    settings = _search_parallel(args)
    variants = load_library(lib_dir)
    try:
        settings.check_variants(cfg, variants)
    except SearchParallelError as err:
        fail(f"{settings.layout}: {err}")
    print(f"scoring {lib_dir.name} on Megatron ({settings.layout})")
    try:
        scores = run_parallel(
            score_variants_megatron,
            settings,
            (cfg, weights, variants, held_out, settings),
            {"metric": args.metric, "batch_sizes": _ints(args.batch_sizes, "--batch-sizes"), "seq_len": args.seq_len},
        )
    except (SearchParallelError, DistributedError, HFCheckpointError, PuzzleModelError) as err:
        fail(str(err))
    if not _writes():
        return 0
    write_json(
        run / "scores.json",
        {
            "metric": args.metric,
            "held_out_tokens": held_out.numel(),
            "layout": settings.layout,
            "scores": [s.to_dict() for s in scores],
        },
    )
    print(
        f"scores: {len(scores)} variants ({args.metric}, {held_out.numel()} held-out tokens, {settings.layout}) -> "
        f"{run / 'scores.json'}"
    )
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Stage 4."""
    import dataclasses

    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.cost import estimate_cost
    from nemotron_plugins.puzzle.search.mip import MIPError, SearchLimits, search
    from nemotron_plugins.puzzle.search.rundir import read_json, write_json
    from nemotron_plugins.puzzle.search.score import VariantScore, build_problem

    run = Path(args.run)
    if (run / "search.json").is_file() and not args.force:
        print(f"{run / 'search.json'} exists; reusing it (--force re-solves)")
        return 0
    cfg = load_hf_config(_run_meta(run)["parent"])
    scores = [VariantScore.from_dict(d) for d in read_json(run / "scores.json", stage="score")["scores"]]
    problem = build_problem(cfg, scores)
    memory = args.memory_bytes
    if args.param_fraction is not None:
        if memory is not None:
            fail("give --param-fraction or --memory-bytes, not both")
        if not 0 < args.param_fraction <= 1:
            fail(f"--param-fraction must be in (0, 1], got {args.param_fraction}")
        # a parameter budget: memory counts the weights only
        problem = dataclasses.replace(
            problem,
            layers=tuple(tuple(dataclasses.replace(o, kv_bytes_per_token=0) for o in opts) for opts in problem.layers),
        )
        memory = 2.0 * args.param_fraction * estimate_cost(cfg).total_params
    try:
        limits = SearchLimits(
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            memory_bytes=memory,
            latency_s=args.latency_s,
            throughput_tokens_per_s=args.throughput,
        )
        result = search(
            problem, limits, num_solutions=args.num_solutions, min_layer_difference=args.min_layer_difference
        )
    except MIPError as err:
        fail(str(err))
    write_json(run / "search.json", result.to_dict())
    if result.infeasibility is not None:
        print(result.infeasibility.message())
        return 1
    for k, sol in enumerate(result.solutions):
        print(
            f"solution {k}: quality {sol.quality:.6g}, params {sol.params:,}, memory {sol.memory_bytes:,.0f} B, "
            f"proven optimal {sol.proven_optimal}, {sol.solve_time_s:.2f} s"
        )
    if result.stopped_early:
        print(result.stopped_early)
    return 0


def run_realize(args: argparse.Namespace) -> int:
    """Stage 5."""
    from nemotron_plugins.puzzle.search.realize import realize
    from nemotron_plugins.puzzle.search.rundir import load_library, read_json, write_json

    run = Path(args.run)
    if (run / "child" / "report.json").is_file() and not args.force:
        print(f"{run / 'child'} exists; reusing it (--force rewrites)")
        return 0
    result = read_json(run / "search.json", stage="search")
    if not 0 <= args.solution < len(result["solutions"]):
        fail(f"--solution {args.solution}: search.json has {len(result['solutions'])} solution(s)")
    names = result["solutions"][args.solution]["names"]
    parent = _run_meta(run)["parent"]
    cfg, weights = _load_parent(parent)
    lib_dir = run / "library_bld" if (run / "library_bld" / "library.json").is_file() else run / "library"
    report = realize(cfg, weights, load_library(lib_dir), names, run / "child", tokenizer_dir=None)
    write_json(run / "child" / "report.json", report)
    print(
        f"child: {report['child']['total_params']:,} params ({report['param_fraction']:.1%} of the parent) -> "
        f"{run / 'child'}"
    )
    for row in report["layers"]:
        print(f"  layer {row['layer']:>3}: {row['choice']}")
    return 0


def run_distill(args: argparse.Namespace) -> int:
    """Stage 6."""
    from nemotron_plugins.puzzle.search.distill import DistillError, DistillSettings
    from nemotron_plugins.puzzle.search.distill import run_distill as distill_child
    from nemotron_plugins.puzzle.search.rundir import load_tokens, write_json
    from nemotron_plugins.runtime.distributed import DistributedError
    from nemotron_plugins.training.setup import RunSetupError

    run = Path(args.run)
    child = Path(args.child) if args.child else run / "child"
    out = Path(args.out) if args.out else run / "child_distilled"
    if (out / "config.json").is_file() and (run / "distill.json").is_file() and not args.force:
        print(f"{out} exists; reusing it (--force retrains)")
        return 0
    if not (child / "config.json").is_file():
        fail(f"--child: {child} holds no config.json: run `nemotron-plugins puzzle realize {run}` first")
    parent = _run_meta(run)["parent"]
    settings = DistillSettings(
        steps=args.steps,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        clip_grad=args.clip_grad,
        kl_weight=args.kl_weight,
        cosine_weight=args.cosine_weight,
        temperature=args.temperature,
        tensor_model_parallel_size=args.tensor_parallel,
        pipeline_model_parallel_size=args.pipeline_parallel,
        data_parallel_size=args.data_parallel,
        sequence_parallel=args.sequence_parallel,
        seed=args.seed,
        torch_threads=args.threads,
    )
    try:
        tokens = load_tokens(args.tokens, what="--tokens")
        result = distill_child(parent, child, tokens, out, settings)
    except (DistillError, RunSetupError, DistributedError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    write_json(
        run / "distill.json",
        {
            "parent": parent,
            "child": str(child),
            "out": str(out),
            "layout": result.layout,
            "tokens": tokens.numel(),
            "settings": {f: getattr(settings, f) for f in settings.__slots__},
            "losses": result.losses,
        },
    )
    first, last = result.losses[0], result.losses[-1]
    print(
        f"distill ({result.layout}): loss {first['loss']:.4f} -> {last['loss']:.4f} (kl {first['kl']:.4f} -> "
        f"{last['kl']:.4f}, cosine {first['cosine']:.4f} -> {last['cosine']:.4f}) over {settings.steps} steps -> {out}"
    )
    return 0


def run_fuse(args: argparse.Namespace) -> int:
    """Stage 7."""
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_state_dict
    from nemotron_plugins.puzzle.search.fuse_planner import fuse_checkpoint, plan_fusion
    from nemotron_plugins.puzzle.search.rundir import load_tokens, write_json

    cfg, weights = _load_parent(args.checkpoint)
    try:
        ids = load_tokens(args.calibration, what="--calibration")
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    plan = plan_fusion(cfg, weights, ids, threshold=args.threshold)
    out = Path(args.out)
    write_json(out / "fusion_plan.json", plan.to_dict())
    print(f"attention-free runs {[list(r) for r in plan.runs]}; fuse {[list(g) for g in plan.groups]}")
    if plan.groups and not args.plan_only:
        fused_cfg, fused = fuse_checkpoint(cfg, weights, plan.fused_ranges())
        export_hf_state_dict(fused, fused_cfg, out)
        print(f"fused checkpoint -> {out}")
    return 0
