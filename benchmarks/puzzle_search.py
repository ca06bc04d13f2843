"""Puzzle end to end on CPU, and the searched child against a uniformly pruned one of the same parameter budget.

One command runs the whole Puzzle pipeline per seed, each stage through ``nemotron-plugins`` itself::

    python benchmarks/puzzle_search.py --out runs/puzzle_e2e --seeds 0 1

1. real-format inputs: the fixture tokenizer (byte-level BPE with the Llama-3 control tokens) and Post-Training-format
   SFT rows (``nemotron_plugins.fixtures``); the rows are split by row into disjoint token sets: calibration,
   training (BLD and distillation), scoring held-out, and evaluation held-out (used only for the table below);
2. a tiny dense parent (every layer GQA + SwiGLU) trained briefly from random weights by the SFT trainer on those rows
   (``run_sft`` on the shared megatron stack) and exported to an HF nemotron-nas checkpoint (``nemotron-plugins
   export``);
3. ``puzzle library`` -> ``puzzle bld`` -> ``puzzle score`` -> ``puzzle search --param-fraction 0.6`` ->
   ``puzzle realize`` -> ``puzzle distill`` -> ``puzzle fuse``;
4. the baseline: a uniformly pruned child of the same budget, every layer keeping the parent's attention and pruning
   its FFN to the same width (the largest width whose child fits the budget; channel-contribution pruning, added to
   the library so BLD trains it like every other variant), realized from the same BLD library and distilled with the
   same settings;
5. per child, the mean per-token ``KL(parent || child)`` on the evaluation tokens (never used by any stage), before
   and after distillation.

``puzzle library``, ``bld`` and ``score`` run on Megatron models (``--search-tp`` / ``--search-pp`` / ``--search-dp``:
their layout, TP x PP x DP local gloo processes; default one process). ``--scale ci`` is a scaled-down variant (smaller parent, fewer steps) for the functional test. The table gives the
sample counts (sequences x tokens) beside every figure; nothing here is timed against a threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True, kw_only=True)
class Scale:
    """Sizes of one end-to-end run."""

    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    layers: int
    window: int
    """Tokens per sequence of the search stages."""
    sft_steps: int
    sft_lr: float
    calibration: int
    """Sequences of each token set."""
    score: int
    evaluation: int
    train: int | None
    """Training sequences (``None``: every remaining one)."""
    bld_epochs: int
    distill_steps: int
    distill_lr: float
    distill_batch: int
    distill_warmup: int
    tie_embeddings: bool = False
    """Tie the output layer to the embedding (keeps the layers the bulk of a small-vocabulary parent)."""


SCALES = {
    "full": Scale(
        hidden=64,
        heads=4,
        kv_heads=4,
        ffn=512,
        layers=6,
        window=64,
        sft_steps=60,
        sft_lr=3e-3,
        calibration=16,
        score=64,
        evaluation=64,
        train=None,
        bld_epochs=1,
        distill_steps=100,
        distill_lr=2e-4,
        distill_batch=8,
        distill_warmup=10,
        tie_embeddings=True,
    ),
    "ci": Scale(
        hidden=32,
        heads=4,
        kv_heads=2,
        ffn=512,
        layers=4,
        window=32,
        sft_steps=6,
        sft_lr=3e-3,
        calibration=8,
        score=8,
        evaluation=16,
        train=32,
        bld_epochs=1,
        distill_steps=20,
        distill_lr=1e-4,
        distill_batch=8,
        distill_warmup=2,
        tie_embeddings=True,
    ),
}

PARAM_FRACTION = 0.6


def _cli(*args: Any) -> None:
    from nemotron_plugins.cli.main import main

    argv = [str(a) for a in args]
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"nemotron-plugins {' '.join(argv)} exited with {code}")


def write_inputs(out: Path, seed: int) -> tuple[Path, Path]:
    """The fixture tokenizer and Post-Training-format SFT rows: ``(tokenizer dir, SFT rows dir)``."""
    from nemotron_plugins.fixtures import build_fixture_tokenizer, write_fixture_data

    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        build_fixture_tokenizer().save_pretrained(str(tok_dir))
    data = out / "data"
    if not (data / "sft").is_dir():
        write_fixture_data(data, seed=seed)
    return tok_dir, data / "sft"


def parent_config(scale: Scale, vocab_size: int) -> Any:
    """The dense parent: every layer GQA (``kv_heads``) + SwiGLU (``ffn``)."""
    from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config

    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(scale.kv_heads), ffn=FFNConfig.swiglu(scale.ffn))
        for _ in range(scale.layers)
    ]
    return make_config(
        hidden_size=scale.hidden,
        num_attention_heads=scale.heads,
        vocab_size=vocab_size,
        blocks=blocks,
        rms_norm_eps=1e-5,
        max_position_embeddings=512,
        field_style="decilm",
        tie_word_embeddings=scale.tie_embeddings,
    )


def train_parent(out: Path, scale: Scale, seed: int, tok_dir: Path, sft_dir: Path) -> Path:
    """Briefly SFT the dense parent from random weights on the rows and export it as an HF checkpoint."""
    from nemotron_plugins.chat.tokenizer import load_tokenizer
    from nemotron_plugins.launch.build import build_recipe
    from nemotron_plugins.puzzle.block_config import save_hf_config
    from nemotron_plugins.sft.trainer import run_sft

    hf = out / "parent"
    if (hf / "config.json").is_file():
        return hf
    arch_dir = out / "parent_arch"
    arch_dir.mkdir(parents=True, exist_ok=True)
    save_hf_config(parent_config(scale, len(load_tokenizer(str(tok_dir)))), arch_dir / "config.json")
    config = build_recipe(
        "tiny_puzzle_sft_cpu",
        [
            f"output_dir={out / 'parent_sft'}",
            f"model.config_path={arch_dir / 'config.json'}",
            "model.init=random",
            "model.seq_length=256",
            "data.dataset=post_training",
            f"data.path={sft_dir}",
            f"data.tokenizer={tok_dir}",
            "data.max_seq_length=256",
            "data.synthetic=null",
            f"optimizer.lr={scale.sft_lr}",
            f"optimizer.min_lr={scale.sft_lr / 10}",
            "optimizer.warmup_steps=5",
            "optimizer.lr_schedule=cosine",
            "evaluation.num_samples=0",
            "evaluation.at_start=false",
            f"train_steps={scale.sft_steps}",
            "micro_batch_size=8",
            "global_batch_size=16",
            "logging.log_interval=25",
            "logging.progress_bar=false",
            "torch_threads=1",
            f"seed={seed}",
        ],
    )
    result = run_sft(config)
    losses = list(result.losses.values())
    print(f"[parent] SFT {len(losses)} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    _cli("export", out / "parent_sft" / "checkpoints", "--hf", hf)
    return hf


def token_sets(out: Path, scale: Scale, seed: int, tok_dir: Path, sft_dir: Path) -> dict[str, Path]:
    """Tokenized rows split BY ROW into calibration / train / score / evaluation sets of ``window``-token sequences."""
    from nemotron_plugins.chat.tokenizer import load_tokenizer
    from nemotron_plugins.data.sft import build_sft_examples
    from nemotron_plugins.data.sources import iter_training_rows

    paths = {name: out / "tokens" / f"{name}.pt" for name in ("calibration", "train", "score", "evaluation")}
    if all(p.is_file() for p in paths.values()):
        return paths
    examples, _ = build_sft_examples(iter_training_rows(sft_dir, []), load_tokenizer(str(tok_dir)), max_seq_len=4096)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)

    def take(n: int | None, cursor: list[int]) -> torch.Tensor:
        stream: list[int] = []
        while cursor[0] < len(order) and (n is None or len(stream) < n * scale.window):
            stream += examples[order[cursor[0]]].input_ids
            cursor[0] += 1
        rows = len(stream) // scale.window if n is None else n
        if rows * scale.window > len(stream):
            raise ValueError(f"not enough rows for {n} sequences of {scale.window} tokens")
        return torch.tensor(stream[: rows * scale.window], dtype=torch.long).view(rows, scale.window)

    cursor = [0]
    sets = {
        "evaluation": take(scale.evaluation, cursor),
        "score": take(scale.score, cursor),
        "calibration": take(scale.calibration, cursor),
        "train": take(scale.train, cursor),
    }
    for name, ids in sets.items():
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        torch.save(ids, paths[name])
    return paths


def uniform_width(parent: Any, budget_params: float) -> int:
    """The largest FFN width ``w`` such that the parent with every FFN pruned to ``w`` fits ``budget_params``."""
    import dataclasses

    from nemotron_plugins.puzzle.block_config import BlockConfig, FFNConfig
    from nemotron_plugins.puzzle.cost import estimate_cost

    def params(width: int) -> int:
        blocks = tuple(BlockConfig(attention=b.attention, ffn=FFNConfig.swiglu(width)) for b in parent.blocks)
        return estimate_cost(dataclasses.replace(parent, blocks=blocks)).total_params

    lo, hi = 0, parent.blocks[0].ffn.intermediate_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if params(mid) <= budget_params else (lo, mid - 1)
    if lo < 1:
        raise ValueError(f"no uniform FFN width fits {budget_params:.0f} parameters")
    return lo


def run_seed(
    out: Path,
    scale: Scale,
    seed: int,
    *,
    distill_tp: int = 1,
    search_tp: int = 1,
    search_dp: int = 1,
    search_pp: int = 1,
) -> dict[str, Any]:
    """The whole pipeline for one seed; returns the comparison row.

    ``search_tp`` / ``search_pp`` / ``search_dp``: the Megatron layout of ``puzzle library``, ``bld`` and ``score``
    (TP x PP x DP local gloo processes; TP must divide every FFN width and KV-head count of the library, PP is at most
    the number of layers).
    """
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.cost import estimate_cost
    from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
    from nemotron_plugins.puzzle.search.realize import realize
    from nemotron_plugins.puzzle.search.rundir import load_library, write_json
    from nemotron_plugins.puzzle.search.score import kl_per_sequence, kl_to_parent

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tok_dir, sft_dir = write_inputs(out / "inputs", seed)
    parent = train_parent(out, scale, seed, tok_dir, sft_dir)
    tokens = token_sets(out, scale, seed, tok_dir, sft_dir)
    timings["parent"] = time.perf_counter() - t0

    p_cfg = load_hf_config(parent)
    p_w = {k: v.float() for k, v in read_hf_state_dict(parent).items()}
    parent_params = estimate_cost(p_cfg).total_params
    width = uniform_width(p_cfg, PARAM_FRACTION * parent_params)
    fractions = sorted({1.0, 0.75, 0.5, 0.25, width / scale.ffn}, reverse=True)
    run = out / "run"
    stages = [
        ("library", ["library", parent, run, "--calibration", tokens["calibration"]]),
        ("bld", ["bld", run, "--tokens", tokens["train"], "--epochs", scale.bld_epochs, "--batch-size", 8]),
        ("score", ["score", run, "--held-out", tokens["score"], "--seq-len", scale.window]),
        ("search", ["search", run, "--param-fraction", PARAM_FRACTION]),
        ("realize", ["realize", run]),
    ]
    stages[0][1].extend(["--ffn-fractions", ",".join(f"{f:.6f}" for f in fractions)])
    for _, args in stages[:3]:
        args.extend(["--tensor-parallel", search_tp, "--pipeline-parallel", search_pp, "--data-parallel", search_dp])
    for name, args in stages:
        t = time.perf_counter()
        _cli("puzzle", *args)
        timings[name] = time.perf_counter() - t

    # the baseline: the same budget, every layer the parent's attention + the same FFN width, from the same library
    uniform = out / "uniform"
    names = [f"attn=gqa{scale.kv_heads} ffn=swiglu{width}"] * scale.layers
    if not (uniform / "child" / "config.json").is_file():
        report = realize(p_cfg, p_w, load_library(run / "library_bld"), names, uniform / "child", tokenizer_dir=parent)
        write_json(uniform / "child" / "report.json", report)
        write_json(uniform / "run.json", {"parent": str(parent.resolve())})

    distill = [
        "--tokens",
        tokens["train"],
        "--steps",
        scale.distill_steps,
        "--global-batch-size",
        scale.distill_batch,
        "--micro-batch-size",
        scale.distill_batch,
        "--lr",
        scale.distill_lr,
        "--min-lr",
        scale.distill_lr / 10,
        "--warmup-steps",
        scale.distill_warmup,
        "--tensor-parallel",
        distill_tp,
        "--seed",
        seed,
    ]
    t = time.perf_counter()
    _cli("puzzle", "distill", run, *distill)
    timings["distill"] = time.perf_counter() - t
    _cli("puzzle", "distill", uniform, *distill)
    t = time.perf_counter()
    _cli("puzzle", "fuse", run / "child_distilled", run / "fused", "--calibration", tokens["calibration"])
    timings["fuse"] = time.perf_counter() - t

    evaluation = torch.load(tokens["evaluation"])
    row: dict[str, Any] = {
        "seed": seed,
        "parent_params": parent_params,
        "eval_sequences": int(evaluation.shape[0]),
        "eval_tokens": int(evaluation.numel()),
        "train_tokens": int(torch.load(tokens["train"]).numel()),
        "timings_s": timings,
    }
    per_sequence = {}
    for label, root in (("searched", run), ("uniform", uniform)):
        report = json.loads((root / "child" / "report.json").read_text())
        row[label] = {
            "params": report["child"]["total_params"],
            "param_fraction": report["param_fraction"],
            "layers": [r["choice"] for r in report["layers"]],
        }
        for when, ckpt in (("before", root / "child"), ("after", root / "child_distilled")):
            kl = kl_per_sequence(p_cfg, p_w, load_hf_config(ckpt), read_hf_state_dict(ckpt), evaluation)
            per_sequence[label, when] = kl
            row[label][f"kl_{when}"] = float(kl.mean())
    for when in ("before", "after"):
        # paired over the evaluation sequences: mean and standard error of (searched - uniform)
        diff = per_sequence["searched", when] - per_sequence["uniform", when]
        row[f"diff_{when}"] = {"mean": float(diff.mean()), "se": float(diff.std() / math.sqrt(diff.numel()))}
    fused = run / "fused"
    plan = json.loads((fused / "fusion_plan.json").read_text())
    row["fusion_groups"] = plan["groups"]
    if (fused / "config.json").is_file():
        row["searched"]["kl_fused"] = kl_to_parent(
            p_cfg, p_w, load_hf_config(fused), read_hf_state_dict(fused), evaluation
        )
    row["total_s"] = time.perf_counter() - t0
    write_json(out / "comparison.json", row)
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    """The comparison, one line per (seed, child)."""
    print()
    print(
        f"held-out KL(parent || child), mean per token; {PARAM_FRACTION:.0%} parameter budget; "
        "evaluation tokens never used by any stage"
    )
    head = f"{'seed':>4}  {'child':<9} {'params':>10} {'of parent':>9}  {'KL before distill':>17}  {'KL after':>9}  n"
    print(head)
    print("-" * (len(head) + 22))
    for row in rows:
        for label in ("searched", "uniform"):
            r = row[label]
            print(
                f"{row['seed']:>4}  {label:<9} {r['params']:>10,} {r['param_fraction']:>9.1%}  {r['kl_before']:>17.4f}"
                f"  {r['kl_after']:>9.4f}  {row['eval_sequences']} seq x {row['eval_tokens'] // row['eval_sequences']}"
                f" tok = {row['eval_tokens']} tokens"
            )
    for row in rows:
        s, u = row["searched"], row["uniform"]
        for when in ("before", "after"):
            d = row[f"diff_{when}"]
            print(
                f"seed {row['seed']} {when:>6} distillation: searched - uniform = {d['mean']:+.5f} +- {d['se']:.5f} "
                f"(paired s.e. over {row['eval_sequences']} sequences); ratio {s[f'kl_{when}'] / u[f'kl_{when}']:.3f}"
            )
        print(
            f"seed {row['seed']}: searched layers: {'; '.join(s['layers'])}; uniform: {u['layers'][0]} x "
            f"{len(u['layers'])}; fusion groups {row['fusion_groups']}"
            + (f" (fused KL {s['kl_fused']:.4f})" if "kl_fused" in s else "")
        )
        print(f"seed {row['seed']}: stage seconds {json.dumps({k: round(v, 1) for k, v in row['timings_s'].items()})}")
        print(f"seed {row['seed']}: end to end {row['total_s']:.0f} s")


def compare_score_paths(layouts: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """``puzzle score``'s work on the plain-torch reference and on Megatron at ``layouts`` (TP, PP, DP), side by side.

    A random parent of the full scale's shape (6 layers, hidden 64, FFN 512, 4 KV heads), 60 library variants (KV
    heads 4 and 2, FFN fractions 1 / .75 / .5 / .25), 64 x 64 held-out tokens; runtimes imported (0) so that only the
    scoring forwards are timed. Prints wall and CPU seconds (this process and its reaped children) and the largest
    relative score difference to the reference; asserts nothing about time.
    """
    import resource

    from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
    from nemotron_plugins.puzzle.search.library import build_library
    from nemotron_plugins.puzzle.search.parallel import SearchParallel, run_parallel, score_variants_megatron
    from nemotron_plugins.puzzle.search.score import score_variants
    from tests.reference.tiny_checkpoints import random_hf_weights

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    blocks = [BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(512)) for _ in range(6)]
    cfg = make_config(
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=300,
        blocks=blocks,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    weights = random_hf_weights(cfg, seed=0)
    held = torch.randint(0, 300, (64, 64), generator=torch.Generator().manual_seed(0))
    library = build_library(cfg, weights, held[:16], kv_heads=[4, 2])
    runtimes = {(v.layer, v.part, v.name): {1: 0.0} for v in library}
    t, c = time.perf_counter(), cpu()
    ref = score_variants(cfg, weights, library, held, runtimes=runtimes)
    rows = [{"path": "plain-torch reference", "wall_s": time.perf_counter() - t, "cpu_s": cpu() - c, "max_rel": 0.0}]
    for tp, pp, dp in layouts:
        # with PP, 4 micro-batches of 16 so that the stages overlap; one forward of all 64 rows otherwise
        micro = 64 if pp == 1 else 16
        settings = SearchParallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            data_parallel_size=dp,
            micro_batch_size=micro,
        )
        t, c = time.perf_counter(), cpu()
        got = run_parallel(
            score_variants_megatron, settings, (cfg, weights, library, held, settings), {"runtimes": runtimes}
        )
        rows.append(
            {
                "path": f"Megatron {settings.layout}",
                "wall_s": time.perf_counter() - t,
                "cpu_s": cpu() - c,
                "max_rel": max(abs(a.score - b.score) / max(1.0, abs(a.score)) for a, b in zip(ref, got, strict=True)),
            }
        )
    print(f"score: {len(library)} variants, {held.shape[0]} x {held.shape[1]} held-out tokens")
    for row in rows:
        print(
            f"  {row['path']:<24} wall {row['wall_s']:7.1f} s  cpu {row['cpu_s']:7.1f} s  "
            f"max relative difference to the reference {row['max_rel']:.1e}"
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the seeds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/puzzle_e2e", help="output directory (one sub-directory per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--distill-tp", type=int, default=1, help="tensor parallel size of `puzzle distill`")
    parser.add_argument("--search-tp", type=int, default=1, help="TP size of `puzzle library / bld / score`")
    parser.add_argument("--search-pp", type=int, default=1, help="PP size of `puzzle library / bld / score`")
    parser.add_argument("--search-dp", type=int, default=1, help="DP size of `puzzle library / bld / score`")
    parser.add_argument(
        "--compare-score-paths",
        action="store_true",
        help="only time `puzzle score`'s work: plain-torch reference vs Megatron TP1, DP2, TP2, PP2 "
        "(see compare_score_paths)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.compare_score_paths:
        return compare_score_paths([(1, 1, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1)])
    rows = [
        run_seed(
            Path(args.out) / f"seed{seed}",
            SCALES[args.scale],
            seed,
            distill_tp=args.distill_tp,
            search_tp=args.search_tp,
            search_dp=args.search_dp,
            search_pp=args.search_pp,
        )
        for seed in args.seeds
    ]
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
