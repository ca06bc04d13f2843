"""Benchmark the ``math`` reward: throughput with the worker pool vs a plain serial math-verify loop, and latency
percentiles with the adversarial suite mixed in.

Run: ``python benchmarks/rewards.py [--samples 600] [--workers 2] [--timeout 3] [--quick]``

Table 1 scores the same clean inputs (a third plain integers ``<think>...</think>1234`` as in the tiny GRPO demo, a
third boxed numbers / fractions, a third LaTeX expressions that need symbolic equivalence) with

* ``math-verify loop``: ``verify(parse(f"${gt}$"), parse(answer_after_think))`` per sample with math-verify's
  defaults (what most reward code does);
* ``MathReward serial``: our reward in this process;
* ``MathReward pool xN``: our reward in N worker processes (one batch call).

Table 2 mixes the adversarial suite (:mod:`nemotron_plugins.rewards.adversarial`) into the clean inputs and scores the
samples one call per sample, recording each call's latency (p50 / p99 / max), how many statuses were not OK, and
whether any code-execution bait ran. Numbers depend on the machine's load; the script prints the load average.

Table 3 (``--agreement``, or alone with ``--only agreement``): agreement of ``math`` with Math-Verify's own
regression cases (vendored in ``tests/unit/rewards/data/math_verify_cases.jsonl``), golds as written.

Table 4 (``--judge``, or alone with ``--only judge``): what a dead judge costs one GRPO step (``--judge-samples``,
default 1152 = 72 prompts x 16 rollouts) with the ``llm_judge`` defaults (3 retries, 32 requests in flight) and a
``--judge-timeout`` request timeout, with the circuit breaker (measured on the whole step) and without it (measured on
two rounds of requests and scaled to the step: without the breaker every round of 32 requests pays every attempt).
The judge is a socket that accepts connections and never answers. The last rows project both to the defaults' 30 s
timeout (with the breaker: one timeout plus the measured overhead; without: every round pays 4 attempts and the
backoffs).

Table 5 (``--agreement``, or alone with ``--only reference``): the other public suites, vendored in
``tests/unit/rewards/data``: TRL's accuracy-reward tests (``math`` vs the expected rows, TRL's own ``accuracy_reward``
in the same run when trl is installed; ``None`` = the sample is skipped, our ``invalid_input``), Google's IFEval
checker tests at instruction level (``ifeval``'s verifiers vs the reference checker's expected verdicts), and
Math-Verify's own ``parse``/``verify`` on its regression cases with each test's settings (the reference itself, for
scale).

Table 6 (``--agreement``, or alone with ``--only ifeval``): ``ifeval`` against Google's IFEval reference checker on
Google's published GPT-4 sample responses (541 prompts, 834 instructions; reference verdicts vendored in
``tests/unit/rewards/data/ifeval_gpt4_sample_reference.jsonl.gz``, provenance in that folder's README): instruction-
and prompt-level agreement, per instruction type, each disagreement listed.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nemotron_plugins.rewards.adversarial import adversarial_cases
from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.math import MathReward
from nemotron_plugins.rewards.pool import PooledReward


def _expression(rng: random.Random) -> tuple[str, str]:
    """A random (prediction, equivalent gold) pair that needs symbolic equivalence, with fresh numbers each time."""
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    options = [
        (f"{a}x^2+{2 * a}x+{a}", f"{a}(x+1)^2"),
        (f"\\frac{{{a}\\sqrt{{2}}}}{{2}}", f"\\frac{{{a}}}{{\\sqrt{{2}}}}"),
        (f"\\{{{a},{a + b}\\}}", f"\\{{{a + b},{a}\\}}"),
        (f"{a}\\pi/{b}", f"\\frac{{{a}\\pi}}{{{b}}}"),
        (f"{a}\\sqrt{{3}}", f"\\sqrt{{{3 * a * a}}}"),
        (f"x^2-{a * a}", f"(x-{a})(x+{a})"),
        (f"({a},{b})", f"({a},{b})"),
    ]
    return options[rng.randrange(len(options))]


def clean_samples(n: int, seed: int = 0) -> list[RewardSample]:
    """``n`` ordinary math samples, about 70% correct, with fresh numbers (no cache can short-cut them)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 3
        right = rng.random() < 0.7
        if kind == 0:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            answer = a + b if right else a + b + rng.choice([-10, -1, 1, 10])
            completion, gt = f"<think>{a}+{b}: add the digits, carry.</think>{answer}", str(a + b)
        elif kind == 1:
            p, q = rng.randint(1, 50), rng.randint(2, 50)
            shown = f"\\frac{{{p}}}{{{q}}}" if right else f"\\frac{{{p + 1}}}{{{q}}}"
            completion, gt = f"<think>simplify</think>The answer is $\\boxed{{{shown}}}$.", f"{p / q:.6f}"
        else:
            pred, gold = _expression(rng)
            if not right:
                pred = pred + "+1"
            completion, gt = f"<think>work</think>So the answer is \\boxed{{{pred}}}.", gold
        out.append(RewardSample(completion=completion, ground_truth=gt, metadata={"reasoning": "on"}))
    return out


def plain_math_verify(samples: list[RewardSample]) -> list[float]:
    """The baseline: math-verify's defaults, one sample at a time (gold wrapped in ``$...$``, reasoning cut off)."""
    from math_verify import parse, verify

    scores = []
    for s in samples:
        try:
            gold = parse(f"${s.ground_truth}$")
            pred = parse(s.completion.split("</think>")[-1])
            scores.append(1.0 if verify(gold, pred) else 0.0)
        except Exception:  # noqa: BLE001 - the baseline's failures score 0
            scores.append(0.0)
    return scores


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


CASES = Path(__file__).resolve().parents[1] / "tests" / "unit" / "rewards" / "data" / "math_verify_cases.jsonl"


def math_verify_agreement() -> None:
    """Table 3: ``math`` on Math-Verify's regression cases, golds as written."""
    import json

    cases = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    rewards: dict[tuple, MathReward] = {}
    agreed, misses = 0, []
    for case in cases:
        key = (case.get("float_rounding", 6), case.get("allow_set_relation_comp", False))
        reward = rewards.setdefault(key, MathReward(float_rounding=key[0], allow_set_relation_comp=key[1]))
        [result] = reward.score([RewardSample(completion=case["pred"], ground_truth=case["gold"])])
        got = result.score if result.status is RewardStatus.OK else result.status.value
        if got == case["expected"]:
            agreed += 1
        else:
            misses.append((case, got))
    print(f"\nTable 3: math vs Math-Verify's regression cases ({CASES.name}), golds as written")
    print(f"agreement: {agreed}/{len(cases)} = {agreed / len(cases):.1%}")
    for case, got in misses:
        print(
            f"  differs: {case['source']}: gold {case['gold'][:50]!r} pred {case['pred'][:40]!r} "
            f"expected {case['expected']} got {got}"
        )


DATA = CASES.parent


def reference_suites() -> None:
    """Table 5: TRL's accuracy-reward tests, Google's IFEval checker tests, Math-Verify on its own cases."""
    import json

    from nemotron_plugins.rewards.ifeval import VERIFIERS, parse_instructions

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]

    table = []
    trl_rows = rows("trl_accuracy_cases.jsonl")
    ours = MathReward()
    agree = 0
    for row in trl_rows:
        [r] = ours.score([RewardSample(completion=row["completion"], ground_truth=row["solution"])])
        agree += (r.score if r.ok else None) == row["expected"]
    table.append(("math vs TRL accuracy-reward tests", agree, len(trl_rows)))
    try:
        from trl.rewards import accuracy_reward, reasoning_accuracy_reward
    except ImportError:
        table.append(("TRL accuracy_reward itself (trl not installed)", 0, 0))
    else:
        agree = 0
        for row in trl_rows:
            fn = reasoning_accuracy_reward if "Reasoning" in row["source"] else accuracy_reward
            got = fn([[{"content": row["completion"]}]], [row["solution"]])[0]
            agree += got == row["expected"]
        table.append(("TRL's own rewards on the same rows", agree, len(trl_rows)))
    ifeval_rows = rows("ifeval_cases.jsonl")
    agree = 0
    for row in ifeval_rows:
        gt = {"instruction_id_list": [row["instruction_id"]], "kwargs": [row["kwargs"]]}
        [(iid, kwargs)] = parse_instructions(gt)
        agree += bool(VERIFIERS[iid].check(row["response"], **kwargs)) == row["expected"]
    table.append(("ifeval vs Google's checker tests (instr.)", agree, len(ifeval_rows)))
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    mv_rows = rows(CASES.name)
    agree = 0
    for row in mv_rows:
        targets = [
            LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig()
            for t in row.get("match_types", ["latex", "expr"])
        ]
        got = verify(
            parse(row["gold"], targets),
            parse(row["pred"], targets),
            float_rounding=row.get("float_rounding", 6),
            allow_set_relation_comp=row.get("allow_set_relation_comp", False),
        )
        agree += int(got) == row["expected"]
    table.append(("Math-Verify itself on its cases (installed)", agree, len(mv_rows)))
    print("\nTable 5: agreement with other public suites (cases vendored in tests/unit/rewards/data)")
    print(f"{'checker vs suite':<46} {'agree':>7} {'cases':>6} {'rate':>7}")
    for name, agreed, total in table:
        print(f"{name:<46} {agreed:>7} {total:>6} {agreed / total if total else float('nan'):>7.1%}")


def ifeval_gpt4_agreement() -> None:
    """Table 6: ``ifeval`` vs Google's reference checker on Google's GPT-4 sample responses."""
    import gzip
    import json
    from collections import Counter

    from nemotron_plugins.rewards.ifeval import IFEvalReward

    path = DATA / "ifeval_gpt4_sample_reference.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    samples = [
        RewardSample(
            completion=row["response"],
            ground_truth={"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]},
        )
        for row in rows
    ]
    results, seconds = timed(IFEvalReward().score, samples)
    total, agree, differ = Counter(), Counter(), []
    prompts_agree = 0
    for row, result in zip(rows, results, strict=True):
        ours = [v == 1.0 for v in result.components.values()] if result.ok else [None] * len(row["reference"])
        prompts_agree += (all(ours) if result.ok else None) == all(row["reference"])
        for iid, got, ref in zip(row["instruction_id_list"], ours, row["reference"], strict=True):
            total[iid] += 1
            if got == ref:
                agree[iid] += 1
            else:
                differ.append((row["key"], iid, got, ref))
    n, k = sum(total.values()), sum(agree.values())
    print(f"\nTable 6: ifeval vs Google's IFEval checker on its GPT-4 sample responses ({path.name})")
    print(f"instruction level: {k}/{n} = {k / n:.2%}; prompt level (all followed): {prompts_agree}/{len(rows)}")
    print(f"scored {len(rows)} samples in {seconds:.2f} s in this process")
    print(f"{'instruction type':<46} {'agree':>6} {'of':>5}")
    for iid in sorted(total):
        print(f"{iid:<46} {agree[iid]:>6} {total[iid]:>5}")
    for key, iid, got, ref in differ:
        print(f"  differs: prompt {key} {iid}: ours {got}, reference {ref}")


def dead_judge_cost(samples: int, timeout_s: float) -> None:
    """Table 4: one step's wall time against a judge that never answers, with and without the circuit breaker."""
    import socket

    from nemotron_plugins.rewards.llm_judge import LLMJudgeReward

    def step(n: int) -> list[RewardSample]:
        return [
            RewardSample(completion=f"<think>..</think>answer {i}", ground_truth="7", prompt=f"q{i // 16}")
            for i in range(n)
        ]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        with_breaker = LLMJudgeReward(base_url=url, timeout_s=timeout_s)
        results, t_breaker = timed(with_breaker.score, step(samples))
        concurrency = with_breaker.max_concurrency
        probe = 2 * concurrency
        without = LLMJudgeReward(base_url=url, timeout_s=timeout_s, breaker_failures=0)
        results_without, t_probe = timed(without.score, step(probe))
    rounds = -(-samples // concurrency)
    t_without = t_probe / 2 * rounds
    statuses = ", ".join(
        f"{st.value}={sum(r.status is st for r in results)}"
        for st in RewardStatus
        if any(r.status is st for r in results)
    )
    policy = with_breaker.policy
    backoff = sum(min(policy.max_backoff_s, policy.backoff_s * 2**k) for k in range(policy.max_retries))
    per_request_30 = (policy.max_retries + 1) * 30.0 + backoff
    print(
        f"\nTable 4: a dead judge, one step of {samples} samples, {concurrency} requests in flight, "
        f"{policy.max_retries} retries"
    )
    print(f"{'judge':<44} {'seconds':>10} {'x timeout':>10}")
    print(f"{f'breaker on, timeout {timeout_s:g} s (measured)':<44} {t_breaker:>10.1f} {t_breaker / timeout_s:>10.2f}")
    print(
        f"{f'breaker off, timeout {timeout_s:g} s ({probe} measured, scaled)':<44} {t_without:>10.1f} "
        f"{t_without / timeout_s:>10.1f}"
    )
    print(
        f"{'breaker on, timeout 30 s (projected)':<44} {30.0 + t_breaker - timeout_s:>10.1f} "
        f"{(30.0 + t_breaker - timeout_s) / 30.0:>10.2f}"
    )
    print(
        f"{'breaker off, timeout 30 s (projected)':<44} {rounds * per_request_30:>10.0f} "
        f"{rounds * per_request_30 / 30.0:>10.1f}"
    )
    print(
        f"statuses with the breaker: {statuses}; without (first {probe}): "
        + ", ".join(
            f"{st.value}={sum(r.status is st for r in results_without)}"
            for st in RewardStatus
            if any(r.status is st for r in results_without)
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=600, help="clean samples in table 1")
    parser.add_argument("--workers", type=int, default=2, help="pool workers")
    parser.add_argument("--timeout", type=float, default=3.0, help="pool per-sample timeout (s)")
    parser.add_argument("--quick", action="store_true", help="fewer samples; skip the baseline on the adversarial mix")
    parser.add_argument("--agreement", action="store_true", help="add table 3 (Math-Verify's regression cases)")
    parser.add_argument("--judge", action="store_true", help="add table 4 (a dead judge's cost per step)")
    parser.add_argument("--only", choices=("agreement", "judge", "reference", "ifeval"), help="run only that table")
    parser.add_argument("--judge-samples", type=int, default=72 * 16, help="samples in the dead-judge step")
    parser.add_argument("--judge-timeout", type=float, default=2.0, help="judge request timeout for table 4 (s)")
    args = parser.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    if args.only:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min)")
        if args.only == "agreement":
            math_verify_agreement()
        elif args.only == "reference":
            reference_suites()
        elif args.only == "ifeval":
            ifeval_gpt4_agreement()
        else:
            dead_judge_cost(args.judge_samples, args.judge_timeout)
        return 0
    n = 150 if args.quick else args.samples

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min)")
    samples = clean_samples(n)
    warmup = clean_samples(60, seed=99)  # every method warms up (imports, sympy caches) on other inputs first
    rows = []
    plain_math_verify(warmup)
    base_scores, t = timed(plain_math_verify, samples)
    rows.append(("math-verify loop (serial)", t, base_scores))
    serial = MathReward()
    serial.score(warmup)
    ours, t = timed(serial.score, samples)
    rows.append(("MathReward serial", t, [r.score for r in ours]))
    for workers in sorted({1, args.workers}):
        with PooledReward(MathReward(), workers=workers, timeout_s=args.timeout) as pool:
            pool.score(warmup)
            pooled, t = timed(pool.score, samples)
        rows.append((f"MathReward pool x{workers}", t, [r.score for r in pooled]))

    print(f"\nTable 1: math reward throughput, {n} clean samples")
    print(f"{'method':<28} {'seconds':>8} {'samples/s':>10} {'mean score':>11} {'agrees w/ baseline':>19}")
    for name, t, scores in rows:
        agree = sum(a == b for a, b in zip(scores, base_scores, strict=True)) / len(scores)
        print(f"{name:<28} {t:>8.2f} {n / t:>10.1f} {statistics.fmean(scores):>11.3f} {agree:>18.1%}")

    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "pwned"
        hostile = [c.sample for c in adversarial_cases(marker)]
        mix = clean_samples(max(100, len(hostile) * 2), seed=1) + hostile
        random.Random(2).shuffle(mix)
        print(f"\nTable 2: per-call latency, {len(mix)} samples ({len(hostile)} adversarial), one sample per call")
        print(
            f"{'method':<28} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>9} {'not ok':>7} {'timeouts':>9} {'bait ran':>9}"
        )

        def report(name, score_one):
            latencies, not_ok, timeouts = [], 0, 0
            for s in mix:
                start = time.perf_counter()
                result = score_one(s)
                latencies.append((time.perf_counter() - start) * 1000)
                if result is not None and result.status is not RewardStatus.OK:
                    not_ok += 1
                    timeouts += result.status is RewardStatus.TIMEOUT
            has_status = score_one is not baseline_one
            print(
                f"{name:<28} {percentile(latencies, 50):>8.1f} {percentile(latencies, 99):>9.1f} "
                f"{max(latencies):>9.1f} {not_ok if has_status else 'n/a':>7} {timeouts if has_status else 'n/a':>9} "
                f"{'YES' if marker.exists() else 'no':>9}"
            )

        def baseline_one(s):
            plain_math_verify([s])

        if not args.quick:
            report("math-verify loop (serial)", baseline_one)
        report("MathReward serial", lambda s: serial.score([s])[0])
        with PooledReward(MathReward(), workers=args.workers, timeout_s=args.timeout) as pool:
            pool.score(clean_samples(60, seed=98))
            report(f"MathReward pool x{args.workers}", lambda s: pool.score([s])[0])
            batch, t = timed(pool.score, mix)
        print(
            f"\nwhole adversarial mix as one batch in the pool x{args.workers}: {t:.2f} s "
            f"({len(mix) / t:.1f} samples/s), statuses: "
            + ", ".join(f"{st.value}={sum(r.status is st for r in batch)}" for st in RewardStatus)
        )
    if args.agreement:
        math_verify_agreement()
        reference_suites()
        ifeval_gpt4_agreement()
    if args.judge:
        dead_judge_cost(args.judge_samples, args.judge_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
