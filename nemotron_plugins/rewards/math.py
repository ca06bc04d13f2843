"""``math``: final-answer extraction (``\\boxed{}`` or plain) and equivalence checking with math-verify.

Pipeline, all bounded:

1. The answer region is the text after the last ``</think>`` (the whole text without think tags; nothing when a think
   block is never closed).
2. The candidate is the last ``\\boxed{...}`` in the region, else a plain final answer: the rest of an
   ``Answer: ...`` / ``the answer is ...`` line, a short final line (``<think>...</think>1234``), the last inline math
   ``$...$``, or the last number.
3. The candidate and the ground truth pass a safety pre-check: length, bracket nesting, balanced braces, no Python
   bait (``__``, ``import``, ``eval``, quotes, ...). A rejected candidate scores 0 with status OK (the model's answer
   is wrong, not the input); a rejected ground truth is invalid input.
4. Plain numbers (``1,234``, ``-2.5``, ``3/4``, ``\\frac{3}{4}``) are compared exactly with :class:`fractions.Fraction`:
   no sympy at all.
5. Otherwise a normalised string comparison, then math-verify: the pre-checked candidate is wrapped as ``$...$`` and
   parsed with math-verify's LaTeX extraction only (latex2sympy builds sympy objects from an ANTLR parse tree and
   never evaluates text). math-verify's plain-expression extraction, which feeds text to sympy's ``parse_expr``
   (an ``eval``), is never used. Candidates that would be expensive to evaluate symbolically (a power in an
   exponent, a huge exponent or factorial) are compared as strings only.

When run in a process's main thread, math-verify's own alarm-based timeouts apply as well; the worker pool
(:mod:`nemotron_plugins.rewards.pool`) adds a hard per-sample kill for anything that still hangs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

from nemotron_plugins.rewards.base import RewardResult, RewardSample, SampleReward
from nemotron_plugins.rewards.text import last_boxed, max_nesting, split_think, truncate

logger = logging.getLogger(__name__)

_FORBIDDEN = re.compile(
    r"__|\bimport\b|\blambda\b|\beval\b|\bexec\b|\bcompile\b|\bgetattr\b|\bsetattr\b|\bglobals\b|\blocals\b"
    r"|\bsubprocess\b|\bsystem\s*\(|\bopen\s*\(|\bos\.|\bsys\.|[\"`;@]|\\(?:input|include|write|def|catcode)\b"
)
_POWER_IN_EXPONENT = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\(?\s*[\w.]+\s*\)?\s*\^|\^\s*\{[^{}]*\{[^{}]*\^")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*\(?\s*-?\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*!|\\\w+\{\s*\d{4,}\s*\}\s*!")
_ANSWER_LINE = re.compile(r"(?:final\s+answer|answer)\s*(?:is\b|:|=)?\s*[:=]?\s*", re.IGNORECASE)
_INLINE_MATH = re.compile(r"\$([^$]{1,2000})\$|\\\((.{1,2000}?)\\\)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?)\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_LATEX_FRAC = re.compile(r"([+-]?)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_LHS = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_STRIP_CMDS = re.compile(r"\\(?:left|right|displaystyle|!|,|;|:|quad|qquad)(?![a-zA-Z])|\\ ")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\{([^{}]*)\}")


def _cheap_normalize(s: str) -> str:
    """A purely textual normal form used for exact-string matching."""
    s = s.strip()
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", "")):
        s = s.replace(a, b)
    s = _STRIP_CMDS.sub("", s)
    s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("%", "").replace("$", "")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".").lower()


def parse_plain_number(s: str) -> Fraction | None:
    """An exact :class:`Fraction` for ``1,234``, ``-2.5``, ``3/4``, ``\\frac{3}{4}``, ``x = 5``; else ``None``."""
    s = _cheap_normalize(s)
    if len(s) > 200:
        return None
    lhs = _LHS.match(s)
    if lhs:
        s = s[lhs.end() :]
    try:
        if _PLAIN_NUMBER.fullmatch(s):
            return Fraction(s.replace(",", ""))
        m = _FRACTION.fullmatch(s) or _LATEX_FRAC.fullmatch(s)
        if m:
            den = Fraction(m.group(3))
            if den == 0:
                return None
            value = Fraction(m.group(2)) / den
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def precheck_latex(s: str, *, max_chars: int, max_depth: int) -> str | None:
    """Why ``s`` may not reach a parser, or ``None`` when it may. Never evaluates anything."""
    if not s.strip():
        return "empty answer"
    if len(s) > max_chars:
        return f"answer has {len(s)} characters (bound {max_chars})"
    depth = max_nesting(s)
    if depth > max_depth:
        return f"answer nests brackets {depth} deep (bound {max_depth})"
    if s.count("{") != s.count("}"):
        return "answer has unbalanced braces"
    if "$" in s:
        return "answer contains '$'"
    m = _FORBIDDEN.search(s)
    if m:
        return f"answer contains forbidden token {m.group(0)!r}"
    if any(ord(c) < 32 and c not in "\t\n\r" for c in s):
        return "answer contains control characters"
    return None


def is_expensive(s: str) -> bool:
    """True for answers whose symbolic evaluation could explode (power towers, huge exponents or factorials)."""
    return bool(_POWER_IN_EXPONENT.search(s) or _BIG_EXPONENT.search(s) or _BIG_FACTORIAL.search(s))


def extract_answer(completion: str, *, mode: str = "auto", tail_chars: int = 4000) -> tuple[str | None, bool]:
    """The final answer candidate of ``completion`` and whether it came from ``\\boxed{}``.

    Args:
        completion: The model's reply.
        mode: ``"auto"`` (boxed, then plain) or ``"boxed"`` (boxed only).
        tail_chars: How much of the end of the answer region plain extraction looks at.

    Example:
        >>> extract_answer("<think>7*6</think>The answer is $\\\\boxed{42}$.")
        ('42', True)
        >>> extract_answer("<think>1000+234</think>1234")
        ('1234', False)
    """
    region = split_think(completion).answer
    boxed = last_boxed(region)
    if boxed is not None:
        return boxed.strip(), True
    if mode == "boxed":
        return None, False
    tail = region[-tail_chars:].strip()
    if not tail:
        return None, False
    # "Answer: ..." / "the final answer is ..." (last occurrence), rest of that line.
    last = None
    for last in _ANSWER_LINE.finditer(tail):  # noqa: B007 - we want the last match
        pass
    if last is not None:
        line = tail[last.end() :].split("\n", 1)[0]
        cand = _clean_plain(line)
        if cand:
            return cand, False
    lines = [ln for ln in tail.split("\n") if ln.strip()]
    final = _clean_plain(lines[-1]) if lines else ""
    if final and len(final) <= 64 and len(re.findall(r"[A-Za-z]{4,}", final)) <= 1:
        return final, False
    inline = None
    for inline in _INLINE_MATH.finditer(tail):  # noqa: B007
        pass
    if inline is not None:
        return (inline.group(1) or inline.group(2)).strip(), False
    numbers = _NUMBER.findall(tail)
    if numbers:
        return numbers[-1].rstrip(","), False
    return None, False


def _clean_plain(line: str) -> str:
    s = line.strip().strip("*").strip()
    m = _INLINE_MATH.search(s)
    if m:
        s = (m.group(1) or m.group(2)).strip()
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    return s.strip().rstrip(".").strip()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class MathReward(SampleReward):
    """1.0 when the completion's final answer equals the ground truth (math-verify equivalence), else 0.0.

    Args:
        mode: ``"auto"`` (boxed answer, else a plain final answer) or ``"boxed"`` (only ``\\boxed{}`` counts).
        max_answer_chars: Bound on the extracted answer and the ground truth that reach a parser.
        max_depth: Bound on their bracket nesting.
        timeout_s: math-verify's own parse/verify timeout (seconds, applied only in a main thread where its
            ``signal.alarm`` works; the worker pool gives the hard bound).
        float_rounding: Decimal places math-verify rounds floats to.
        max_completion_chars: Completions longer than this are invalid input.

    Components: ``extracted`` (an answer was found), ``boxed`` (it came from ``\\boxed{}``).

    Example:
        >>> r = MathReward()
        >>> [x.score for x in r.score([RewardSample(completion="<think>..</think>\\\\boxed{\\\\frac{1}{2}}", ground_truth="0.5")])]
        [1.0]
    """

    name = "math"
    preload_modules = ("math_verify", "latex2sympy2_extended", "sympy")

    def __init__(
        self,
        *,
        mode: str = "auto",
        max_answer_chars: int = 1000,
        max_depth: int = 40,
        timeout_s: float = 5.0,
        float_rounding: int = 6,
        max_completion_chars: int = 200_000,
    ) -> None:
        if mode not in ("auto", "boxed"):
            raise ValueError(f"math: mode must be 'auto' or 'boxed', got {mode!r}")
        self.mode = mode
        self.max_answer_chars = max_answer_chars
        self.max_depth = max_depth
        self.timeout_s = timeout_s
        self.float_rounding = float_rounding
        self.max_completion_chars = max_completion_chars

    def warmup(self) -> None:
        """Run one symbolic comparison so lazy imports and parser set-up happen now (pool workers call this before
        reporting ready, so the first real sample does not pay for it against its timeout)."""
        self._math_verify("(x+1)^2", "x^2+2x+1")

    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample (see the module docstring)."""
        gold_text = _ground_truth_text(sample.ground_truth)
        if gold_text is None:
            return RewardResult.invalid(
                f"math: ground_truth must be a non-empty string or number, got {truncate(repr(sample.ground_truth))}"
            )
        boxed_gold = last_boxed(gold_text)
        if boxed_gold is not None:
            gold_text = boxed_gold
        reason = precheck_latex(gold_text, max_chars=self.max_answer_chars, max_depth=self.max_depth)
        if reason:
            return RewardResult.invalid(f"math: ground_truth rejected: {reason}")

        cand, boxed = extract_answer(sample.completion, mode=self.mode)
        if cand is None:
            return RewardResult(
                score=0.0, components={"extracted": 0.0, "boxed": 0.0}, message="no final answer found"
            )
        components = {"extracted": 1.0, "boxed": 1.0 if boxed else 0.0}
        reason = precheck_latex(cand, max_chars=self.max_answer_chars, max_depth=self.max_depth)
        if reason:
            return RewardResult(score=0.0, components=components, message=f"answer not checked: {reason}")
        correct = self._equivalent(gold_text, cand)
        return RewardResult(score=1.0 if correct else 0.0, components=components)

    def _equivalent(self, gold: str, cand: str) -> bool:
        g_num = parse_plain_number(gold)
        c_num = parse_plain_number(cand)
        if g_num is not None and c_num is not None:
            return g_num == c_num or _close(g_num, c_num, self.float_rounding)
        if _cheap_normalize(gold) == _cheap_normalize(cand):
            return True
        if is_expensive(cand) or is_expensive(gold):
            return False
        return self._math_verify(gold, cand)

    def _math_verify(self, gold: str, cand: str) -> bool:
        from math_verify import verify

        timeout = max(1, math.ceil(self.timeout_s)) if _main_thread() else None
        gold_parsed = _parse_latex(gold, timeout)
        if not gold_parsed:
            return False
        cand_parsed = _parse_latex(cand, timeout)
        if not cand_parsed:
            return False
        return bool(
            verify(list(gold_parsed), list(cand_parsed), float_rounding=self.float_rounding, timeout_seconds=timeout)
        )


def _close(a: Fraction, b: Fraction, rounding: int) -> bool:
    """Decimal answers equal after rounding to ``rounding`` places (``0.333333`` vs ``1/3``)."""
    if a.denominator == 1 and b.denominator == 1:
        return False
    return round(a, rounding) == round(b, rounding)


def _ground_truth_text(gt: Any) -> str | None:
    if isinstance(gt, bool):
        return None
    if isinstance(gt, int | float) and math.isfinite(gt):
        return str(gt)
    if isinstance(gt, str) and gt.strip():
        return gt.strip()
    return None


@lru_cache(maxsize=4096)
def _parse_cached(latex: str, timeout: int | None) -> tuple[Any, ...]:
    from math_verify import LatexExtractionConfig, parse

    config = LatexExtractionConfig(boxed_match_priority=0)
    return tuple(parse(f"${latex}$", extraction_config=[config], parsing_timeout=timeout))


def _parse_latex(latex: str, timeout: int | None) -> tuple[Any, ...]:
    """math-verify's LaTeX parse of a pre-checked string (never its ``parse_expr`` path)."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return _parse_cached(latex, timeout)
