"""A suite of hostile completions for testing and benchmarking rewards.

Every case is a :class:`RewardSample` built to break a naive reward: huge inputs, deep or unclosed nesting, odd
unicode, regex-backtracking bait, expressions that explode when evaluated, and *code-execution bait*: answers that
run Python (creating a marker file) if any parser ``eval``-s them, e.g. sympy's ``parse_expr``. A safe reward returns
a finite score and a status for every case, within its time bound, and the marker file never appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nemotron_plugins.rewards.base import RewardSample


@dataclass(frozen=True, kw_only=True, slots=True)
class AdversarialCase:
    """One hostile sample."""

    name: str
    """Short identifier."""
    sample: RewardSample
    """The sample to score."""
    slow: bool = False
    """Legitimately expensive to verify: only bounded by a worker pool's hard timeout, not by pre-checks."""


def code_bait(marker: Path) -> list[str]:
    """Python snippets that create ``marker`` when evaluated (``eval``, ``exec``, sympy ``parse_expr``)."""
    m = str(marker)
    return [
        f"__import__('pathlib').Path('{m}').touch()",
        f"__import__('os').system('touch {m}')",
        f"(lambda: __import__('pathlib').Path('{m}').touch())()",
        f"exec(\"import pathlib; pathlib.Path('{m}').touch()\")",
        f"eval(compile(\"__import__('pathlib').Path('{m}').touch()\", 'x', 'eval'))",
        f"open('{m}', 'w').write('pwned')",
        f"x; __import__('pathlib').Path('{m}').touch()",
        f"getattr(__import__('pathlib'), 'Path')('{m}').touch()",
    ]


def adversarial_cases(marker: Path, *, include_slow: bool = True) -> list[AdversarialCase]:
    """The hostile suite; code bait in it targets ``marker`` (a path that must never be created).

    Args:
        marker: File that code-execution bait would create.
        include_slow: Include cases only a worker pool's hard timeout bounds.
    """
    on = {"reasoning": "on"}
    cases: list[tuple[str, str, object]] = []
    for i, bait in enumerate(code_bait(marker)):
        cases += [
            (f"boxed_code_{i}", f"<think>x</think>\\boxed{{{bait}}}", "1"),
            (f"plain_code_{i}", f"<think>x</think>The answer is {bait}", "1"),
            (f"bare_code_{i}", f"<think>x</think>{bait}", "1"),
            (f"inline_code_{i}", f"<think>x</think>Answer: ${bait}$", "1"),
            (f"sympify_bait_{i}", f"<think>x</think>\\boxed{{\\text{{{bait}}}}}", "x"),
        ]
    cases += [
        ("latex_input_file", "\\boxed{\\input{/etc/passwd}}", "1"),
        ("latex_macro_loop", "\\boxed{\\def\\a{\\a}\\a}", "1"),
        ("huge_completion_10mb", "<think>" + "a" * 10_000_000 + "</think>\\boxed{1}", "1"),
        ("big_completion_in_bound", "<think>" + "word " * 30_000 + "</think>\\boxed{1}", "1"),
        ("many_boxes", "\\boxed{" * 100_000, "1"),
        ("deep_frac", "\\boxed{" + "\\frac{1}{" * 2_000 + "2" + "}" * 2_001, "1"),
        ("deep_parens", "\\boxed{" + "(" * 5_000 + "1" + ")" * 5_000 + "}", "1"),
        ("deep_brackets_plain", "Answer: " + "[" * 50_000, "1"),
        ("unclosed_braces", "\\boxed{\\frac{1}{2}", "0.5"),
        ("unclosed_many", "{" * 100_000, "1"),
        ("closing_only", "}" * 100_000 + "\\boxed{1}", "1"),
        ("unicode_fullwidth", "\\boxed{４２}", "42"),
        ("unicode_mixed", "<think>😀\u202e\u200d</think>\\boxed{\u0661\u0662 + x\u0301}", "12"),
        ("nul_and_controls", "\\boxed{1\x00\x01\x02}", "1"),
        ("surrogate_escape", "\\boxed{\udcff}", "1"),
        ("dollar_flood", "$" * 200_000, "1"),
        ("answer_flood", "answer is " * 50_000, "1"),
        ("inline_flood", "\\(" * 100_000, "1"),
        ("number_flood", "1," * 200_000, "1"),
        ("think_tag_flood", "<think>" * 50_000 + "</think>" * 50_000 + "1", "1"),
        ("power_tower", "\\boxed{9^{9^{9^{9}}}}", "1"),
        ("huge_exponent", "\\boxed{10^{1000000000}}", "1"),
        ("factorial_bomb", "\\boxed{1000000!}", "1"),
        ("long_number", "\\boxed{" + "9" * 999 + "}", "1"),
        ("tool_json_deep", "<think></think><tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>", "1"),
        ("tool_json_nan", '<think></think><tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>', "1"),
    ]
    out = [
        AdversarialCase(name=n, sample=RewardSample(completion=c, ground_truth=g, metadata=on)) for n, c, g in cases
    ]
    if include_slow:
        out.append(
            AdversarialCase(
                name="slow_polynomial_expansion",
                sample=RewardSample(completion="\\boxed{(x+1)^{9999}}", ground_truth="x^{9999}", metadata=on),
                slow=True,
            )
        )
    return out
