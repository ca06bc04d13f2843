"""``nemotron-plugins data``: synthetic datasets and SFT data checks.

``data synth-arithmetic --out DIR [--n-train N] [--n-heldout N] [--seed S] [--corrupt-fraction F] ...`` writes the
synthetic addition dataset (see :mod:`nemotron_plugins.data.synthetic`). ``data check PATH --max-seq-len N
[--tokenizer tiny|DIR] [--strict] [--pack SEQ_LEN] [--json]`` builds SFT examples from a local
Post-Training-Dataset source and prints the per-reason report (exit 1 when rows were skipped in strict mode).
"""

from __future__ import annotations

import argparse
import json

from nemotron_plugins.cli.common import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` group."""
    parser = subparsers.add_parser("data", help="synthetic datasets and SFT data checks")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    synth = sub.add_parser("synth-arithmetic", help="write the synthetic addition dataset (JSONL)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--n-train", type=int, default=4000, help="training problems (default 4000)")
    synth.add_argument("--n-heldout", type=int, default=500, help="held-out problems (default 500)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--min-value", type=int, default=10)
    synth.add_argument("--max-value", type=int, default=999)
    synth.add_argument("--corrupt-fraction", type=float, default=0.0, help="fraction of corrupted SFT traces")
    synth.add_argument("--corruption", choices=("forgotten_carry", "reversed_answer"), default="forgotten_carry")
    synth.add_argument(
        "--reversed-answer-fraction",
        type=float,
        default=0.0,
        help="fraction of SFT problems whose answer is also written reversed (independent of --corrupt-fraction)",
    )
    synth.add_argument("--no-off", action="store_true", help="do not write the reasoning-off rows")
    synth.set_defaults(func=run_synth)

    check = sub.add_parser("check", help="build SFT examples from a local source and report skipped rows")
    check.add_argument("path", help=".jsonl / .parquet file or a dataset directory")
    check.add_argument("--max-seq-len", type=int, required=True)
    check.add_argument("--tokenizer", default="tiny", help="'tiny' or a local tokenizer directory")
    check.add_argument("--split", default="train")
    check.add_argument("--strict", action="store_true", help="stop at the first bad row")
    check.add_argument("--pack", type=int, metavar="SEQ_LEN", help="also pack into rows of SEQ_LEN tokens")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    """Write the synthetic addition dataset."""
    from nemotron_plugins.data.synthetic import ArithmeticConfig, write_synthetic_dataset

    try:
        config = ArithmeticConfig(
            min_value=args.min_value,
            max_value=args.max_value,
            corrupt_fraction=args.corrupt_fraction,
            corruption=args.corruption,
            reversed_answer_fraction=args.reversed_answer_fraction,
            include_off=not args.no_off,
        )
        result = write_synthetic_dataset(args.out, args.n_train, args.n_heldout, args.seed, config=config)
    except ValueError as exc:
        fail(str(exc))
    print(json.dumps({"files": {k: str(v) for k, v in result.files.items()}, **result.stats}, indent=2))
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Build SFT examples and print the report."""
    from nemotron_plugins.chat.tokenizer import load_tokenizer
    from nemotron_plugins.data.packing import pack_examples, packing_stats
    from nemotron_plugins.data.report import BadRowError
    from nemotron_plugins.data.sft import load_sft_examples

    try:
        tokenizer = load_tokenizer(args.tokenizer)
        examples, report = load_sft_examples(
            args.path, tokenizer, max_seq_len=args.max_seq_len, strict=args.strict, split=args.split
        )
    except BadRowError as exc:
        fail(f"{args.path}: {exc}", code=1)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        fail(str(exc))
    out = report.to_dict()
    if args.pack:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        try:
            out["packing"] = packing_stats(pack_examples(examples, args.pack, pad_id=pad_id))
        except ValueError as exc:
            fail(str(exc))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(report.format())
        if "packing" in out:
            print("packing: " + ", ".join(f"{k}={v:.4g}" for k, v in out["packing"].items()))
    return 0
