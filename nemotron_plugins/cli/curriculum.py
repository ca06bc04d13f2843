"""``nemotron-plugins curriculum``: estimate pass rates, filter by them, and plan progressive batches.

Examples::

    nemotron-plugins curriculum estimate --input prompts.jsonl --output rated.jsonl \\
        --base-url http://127.0.0.1:8000/v1 --model weak-model --reward math -k 8
    nemotron-plugins curriculum filter --input rated.jsonl --output kept.jsonl --max-pass-rate 0.75
    nemotron-plugins curriculum plan --input kept.jsonl --batch-size 576 --seed 0 --plot plan.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nemotron_plugins.cli.common import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``curriculum`` group."""
    parser = subparsers.add_parser("curriculum", help="pass-rate curriculum: estimate, filter, plan batches")
    sub = parser.add_subparsers(dest="curriculum_command", metavar="SUBCOMMAND")

    plan = sub.add_parser("plan", help="plan progressive Gaussian batches from a JSONL of {id, pass_rate}")
    plan.add_argument("--input", required=True, help="JSONL file; every line has 'id' and 'pass_rate' in [0, 1]")
    plan.add_argument("--batch-size", type=int, required=True, help="prompts per global batch")
    plan.add_argument("--seed", type=int, default=0, help="plan seed (default 0)")
    plan.add_argument("--epoch", type=int, default=0, help="which epoch's plan (default 0)")
    plan.add_argument("--num-batches", type=int, default=None, help="batches in the run (default: all the data)")
    plan.add_argument("--num-bins", type=int, default=10, help="equal-width pass-rate bins over [0, 1] (default 10)")
    plan.add_argument("--width", type=float, default=0.15, help="Gaussian std in pass-rate units (default 0.15)")
    plan.add_argument("--center-start", type=float, default=None, help="first batch's centre (default: easiest bin)")
    plan.add_argument("--center-end", type=float, default=None, help="last batch's centre (default: hardest bin)")
    plan.add_argument(
        "--schedule",
        default="linear",
        choices=["linear", "cosine", "sqrt", "quadratic", "constant"],
        help="how the centre moves (default linear)",
    )
    plan.add_argument(
        "--balance",
        default="none",
        choices=["none", "sinkhorn"],
        help="none = the paper's recipe; sinkhorn = targets rescaled to the data so the mean falls to the end",
    )
    plan.add_argument("--keep-last", action="store_true", help="keep a final partial batch")
    plan.add_argument("--plot", default=None, metavar="FILE.png", help="draw the per-batch pass-rate mix")
    plan.add_argument("--json", action="store_true", help="print {batches: [[ids]], mean_pass_rate: [...]}")
    plan.set_defaults(func=run_plan)

    filt = sub.add_parser("filter", help="drop prompts whose pass rate is too high (or too low)")
    filt.add_argument("--input", required=True, help="JSONL with 'id' and 'pass_rate' per line")
    filt.add_argument("--output", required=True, help="JSONL receiving the kept lines unchanged")
    filt.add_argument("--max-pass-rate", type=float, default=0.75, help="drop pass_rate >= this (default 0.75)")
    filt.add_argument("--min-pass-rate", type=float, default=None, help="drop pass_rate < this (default: none)")
    filt.add_argument("--num-bins", type=int, default=10, help="bins of the report (default 10)")
    filt.add_argument("--json", action="store_true", help="print the report as JSON")
    filt.set_defaults(func=run_filter)

    est = sub.add_parser("estimate", help="estimate pass rates with an OpenAI-compatible server and a reward")
    est.add_argument("--input", required=True, help="JSONL prompts with 'id', 'prompt' and 'ground_truth'")
    est.add_argument("--output", required=True, help="JSONL written with pass_rate etc.; resumes if it exists")
    est.add_argument("--base-url", required=True, help="server root with API prefix, e.g. http://127.0.0.1:8000/v1")
    est.add_argument("--model", default="default", help="model name sent to the server")
    est.add_argument("--reward", required=True, help="registered reward name or a JSON reward spec")
    est.add_argument("-k", "--num-samples", type=int, default=8, help="completions per prompt (default 8)")
    est.add_argument("--pass-threshold", type=float, default=1.0, help="score counted as a pass (default 1.0)")
    est.add_argument("--prompt-field", default="prompt", help="prompt field (text or chat messages)")
    est.add_argument("--ground-truth-field", default="ground_truth", help="reference answer field")
    est.add_argument("--system-prompt", default=None, help="system turn for text prompts, e.g. 'detailed thinking on'")
    est.add_argument("--completions-api", action="store_true", help="use /completions instead of /chat/completions")
    est.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    est.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    est.add_argument("--max-tokens", type=int, default=1024, help="completion length limit (default 1024)")
    est.add_argument("--concurrency", type=int, default=8, help="prompts in flight (default 8)")
    est.add_argument("--chunk-size", type=int, default=16, help="prompts per journal write (default 16)")
    est.add_argument(
        "--reward-workers", type=int, default=2, help="reward worker processes (bounded scoring; default 2)"
    )
    est.add_argument(
        "--reward-timeout", type=float, default=10.0, help="seconds per completion before its worker is killed"
    )
    est.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    est.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key, if any")
    est.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    est.set_defaults(func=run_estimate)


def run_plan(args: argparse.Namespace) -> int:
    """Plan one epoch and print it (table or JSON), optionally drawing it."""
    from nemotron_plugins.curriculum.records import CurriculumInputError, load_pass_rates
    from nemotron_plugins.curriculum.sampler import ProgressiveGaussianBatchSampler

    try:
        table = load_pass_rates(args.input)
        sampler = ProgressiveGaussianBatchSampler(
            table.pass_rates,
            global_batch_size=args.batch_size,
            num_batches=args.num_batches,
            num_bins=args.num_bins,
            center_start=args.center_start,
            center_end=args.center_end,
            width=args.width,
            schedule=args.schedule,
            balance=args.balance,
            seed=args.seed,
            drop_last=not args.keep_last,
        )
        plan = sampler.plan_epoch(args.epoch)
    except CurriculumInputError as exc:
        fail(str(exc))
    means = sampler.batch_mean_pass_rates(args.epoch)
    if args.plot:
        from nemotron_plugins.curriculum.plotting import plot_plan

        title = (
            f"Curriculum plan: {plan.num_batches} batches of {args.batch_size} "
            f"(width {args.width}, {args.schedule}, balance {args.balance})"
        )
        plot_plan(plan.bin_counts, means, args.plot, title=title)
    if args.json:
        ids = table.ids
        batches = [[ids[i] for i in plan.batch(b).tolist()] for b in range(plan.num_batches)]
        json.dump({"batches": batches, "mean_pass_rate": [round(float(m), 6) for m in means]}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    sizes = plan.batch_sizes()
    print(
        f"{len(table)} prompts -> {plan.num_batches} batches of {args.batch_size} "
        f"({int(sizes.sum())} prompts used, {len(table) - int(sizes.sum())} left out this epoch)"
    )
    print(f"{'batch':>7}  {'size':>6}  {'mean pass rate':>14}")
    shown = sorted(set(_spread(plan.num_batches, 12)))
    for b in shown:
        print(f"{b:>7}  {int(sizes[b]):>6}  {means[b]:>14.4f}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def _spread(n: int, count: int) -> list[int]:
    if n <= count:
        return list(range(n))
    return [round(i * (n - 1) / (count - 1)) for i in range(count)]


def run_filter(args: argparse.Namespace) -> int:
    """Filter a JSONL by pass rate and print the per-bin report."""
    from nemotron_plugins.curriculum.filtering import FilterConfig, filter_jsonl
    from nemotron_plugins.curriculum.records import CurriculumInputError

    config = FilterConfig(max_pass_rate=args.max_pass_rate, min_pass_rate=args.min_pass_rate, num_bins=args.num_bins)
    try:
        report = filter_jsonl(args.input, args.output, config)
    except CurriculumInputError as exc:
        fail(str(exc))
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.format_table())
        print(f"kept {report.kept} of {report.total} prompts -> {args.output}")
    return 0


def run_estimate(args: argparse.Namespace) -> int:
    """Estimate pass rates against an OpenAI-compatible server."""
    from nemotron_plugins.curriculum.openai_generator import OpenAICompatibleGenerator, OpenAIGeneratorConfig
    from nemotron_plugins.curriculum.pass_rate import GenerationError, PassRateConfig, estimate_pass_rates
    from nemotron_plugins.curriculum.records import CurriculumInputError
    from nemotron_plugins.registry import PluginError

    reward: object = args.reward
    if args.reward.lstrip().startswith("{"):
        try:
            reward = json.loads(args.reward)
        except json.JSONDecodeError as exc:
            fail(f"--reward looks like JSON but does not parse: {exc}")
    try:
        generator = OpenAICompatibleGenerator(
            OpenAIGeneratorConfig(
                base_url=args.base_url,
                model=args.model,
                api_key=os.environ.get(args.api_key_env) or None,
                chat=not args.completions_api,
                system_prompt=args.system_prompt,
                temperature=args.temperature,
                top_p=args.top_p,
                max_tokens=args.max_tokens,
                timeout_s=args.timeout,
                concurrency=args.concurrency,
            )
        )
        config = PassRateConfig(
            num_samples=args.num_samples,
            pass_threshold=args.pass_threshold,
            prompt_field=args.prompt_field,
            ground_truth_field=args.ground_truth_field,
            chunk_size=args.chunk_size,
            show_progress=not args.no_progress,
            reward_workers=args.reward_workers,
            reward_timeout_s=args.reward_timeout,
        )
        summary = estimate_pass_rates(args.input, args.output, generator, reward, config)
    except (CurriculumInputError, GenerationError, PluginError, ValueError) as exc:
        fail(str(exc))
    print(
        f"{summary.total} prompts: {summary.resumed} already done, {summary.estimated} estimated now; "
        f"mean pass rate {summary.mean_pass_rate:.4f}; {summary.reward_errors} completion(s) the reward could not "
        f"score -> {args.output}"
    )
    return 0
