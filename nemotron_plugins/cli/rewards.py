"""``nemotron-plugins rewards``: score JSONL completions with a registered reward, list rewards.

Input lines: ``{"completion": str, "ground_truth": any, "prompt"?: str | [messages], "metadata"?: {...}}``.
Output: one JSON line per input line, in input order: ``{"score", "status", "components", "message"}``.

Scoring is bounded by default: the reward runs through :func:`~nemotron_plugins.rewards.pool.bounded_reward` (a pool
of ``--workers`` processes, each sample killed after ``--timeout`` seconds and capped in memory; server-backed
rewards keep their own deadlines). ``--in-process`` scores in this process with no bound, for trusted inputs only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from nemotron_plugins.cli.common import fail

_ALLOWED_KEYS = {"completion", "ground_truth", "prompt", "metadata"}

#: Worker processes and per-sample time bound when neither ``--workers`` nor ``--timeout`` is given.
DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT_S = 10.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``rewards`` group."""
    parser = subparsers.add_parser("rewards", help="score completions with reward functions")
    sub = parser.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND")
    score = sub.add_parser("score", help="score a JSONL file (or stdin) with a reward; writes JSONL")
    score.add_argument(
        "--reward",
        required=True,
        help='a registered reward name (see "rewards list") or a JSON spec, e.g. '
        '\'{"gate": ["think_format", "math"]}\'',
    )
    score.add_argument("--options", default=None, help="JSON object of keyword options for a named reward")
    score.add_argument("--input", default="-", help="input JSONL file ('-' or omitted: stdin)")
    score.add_argument("--output", default="-", help="output JSONL file ('-' or omitted: stdout)")
    score.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes that score the samples, each sample bounded in time and memory (default {DEFAULT_WORKERS})",
    )
    score.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"per-sample time bound in the workers, seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    score.add_argument(
        "--in-process",
        action="store_true",
        help="RISK: score in this process with no time or memory bound. One hostile or pathological completion "
        "(e.g. \\binom{99999999}{49999999}, 10^{9999*9999}) can hang this command or exhaust memory; math-verify's "
        "own timeout is not a bound. Only for trusted inputs; --workers / --timeout are refused with it",
    )
    score.add_argument("--batch-size", type=int, default=256, help="samples scored per call (output is streamed)")
    score.set_defaults(func=run_score)
    listing = sub.add_parser("list", help="list the registered rewards")
    listing.set_defaults(func=run_list)


def parse_input_line(line: str, lineno: int, source: str) -> Any:
    """One input line as a :class:`~nemotron_plugins.rewards.base.RewardSample`; exits with an error naming the
    line when it is malformed."""
    from nemotron_plugins.rewards.base import RewardSample

    where = f"{source} line {lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        fail(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        fail(f"{where}: expected a JSON object with 'completion', got {type(obj).__name__}")
    unknown = set(obj) - _ALLOWED_KEYS
    if unknown:
        fail(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_KEYS)}")
    completion = obj.get("completion")
    if not isinstance(completion, str):
        fail(f"{where}: 'completion' must be a string, got {type(completion).__name__}")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str | list):
        fail(f"{where}: 'prompt' must be a string or a list of chat messages, got {type(prompt).__name__}")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        fail(f"{where}: 'metadata' must be an object, got {type(metadata).__name__}")
    return RewardSample(completion=completion, ground_truth=obj.get("ground_truth"), prompt=prompt, metadata=metadata)


def _read_samples(stream: TextIO, source: str) -> list[Any]:
    samples = []
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        samples.append(parse_input_line(line, lineno, source))
    return samples


def _build(args: argparse.Namespace) -> Any:
    from nemotron_plugins.registry import PluginError
    from nemotron_plugins.rewards.base import RewardSpecError, build_reward

    spec: Any = args.reward
    if spec.lstrip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            fail(f"--reward: not a valid JSON spec: {exc}")
    options: dict[str, Any] = {}
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            fail(f"--options: not valid JSON: {exc}")
        if not isinstance(options, dict):
            fail("--options must be a JSON object")
        if not isinstance(spec, str):
            fail("--options applies to a named --reward; put options for a spec inside the spec")
    try:
        reward = build_reward(spec, **options)
    except (RewardSpecError, PluginError, ValueError) as exc:
        fail(f"--reward: {exc}")
    if args.in_process:
        given = [
            flag for flag, value in (("--workers", args.workers), ("--timeout", args.timeout)) if value is not None
        ]
        if given:
            fail(
                f"{' and '.join(given)} bound(s) the worker pool; --in-process scores without one: drop one or the other"
            )
        return reward
    from nemotron_plugins.rewards.pool import bounded_reward

    workers = DEFAULT_WORKERS if args.workers is None else args.workers
    timeout_s = DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    if workers < 1:
        fail(f"--workers must be >= 1, got {workers} (--in-process scores without workers, unbounded)")
    if timeout_s <= 0:
        fail(f"--timeout must be > 0, got {timeout_s}")
    return bounded_reward(reward, workers=workers, timeout_s=timeout_s)


def run_score(args: argparse.Namespace) -> int:
    """Score the input lines and write one JSON line per input, in order."""
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.input == "-":
        samples = _read_samples(sys.stdin, "stdin")
    else:
        try:
            with open(args.input, encoding="utf-8") as f:
                samples = _read_samples(f, args.input)
        except OSError as exc:
            fail(f"--input: cannot read {args.input}: {exc.strerror}")
    reward = _build(args)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        with reward:
            for start in range(0, len(samples), args.batch_size):
                for result in reward.score(samples[start : start + args.batch_size]):
                    out.write(json.dumps(result.to_dict()) + "\n")
                out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the registered rewards."""
    from nemotron_plugins.registry import REWARDS

    for entry in REWARDS.entries():
        print(f"{entry.name:<14} {entry.target_path}")
    return 0
