"""``math``: final-answer extraction (``\\boxed{}`` or plain) and equivalence checking with math-verify.

Pipeline, all bounded:

1. The answer region is the text after the last ``</think>`` (the whole text without think tags; nothing when a think
   block is never closed).
2. The candidate is the last ``\\boxed{...}`` in the region, else a plain final answer: the last ``<answer>...</answer>``
   tag, the rest of an ``Answer: ...`` / ``the answer is ...`` line (whole words only: "answers your question" is not
   an answer line; "The volume of $V$ is 120" gives ``120``), a short final line (``<think>...</think>1234``), the
   last inline math ``$...$``, or the last number.
3. The ground truth is read as written: outer ``$...$`` / ``$$...$$`` / ``\\(...\\)`` and currency ``\\$`` are
   removed; a gold with several math spans or boxes (``$1$ and $2$``, ``\\boxed{1}\\boxed{2}``) goes to math-verify's
   own LaTeX extraction whole.
4. The candidate and the ground truth pass a safety pre-check: length, bracket nesting, balanced braces, no Python
   bait (``__``, ``import``, ``eval``, quotes, ...). A rejected ground truth is invalid input; a rejected candidate
   is not compared as a string (the answer region may still match, see 6).
5. Plain numbers (``1,234``, ``1 000``, ``-2.5``, ``3/4``, ``\\frac{3}{4}``, ``20\\%``, an unambiguous decimal comma
   ``1000,99``) are compared exactly with :class:`fractions.Fraction`: no sympy at all. ``32, 349`` is a list.
6. Otherwise a normalised string comparison, then math-verify on the two as LaTeX, then math-verify's LaTeX
   extraction over the gold as written and the last ``region_chars`` of the answer region. Only math-verify's LaTeX
   extraction is used: latex2sympy builds sympy objects from an ANTLR parse tree and never evaluates text;
   math-verify's plain-expression extraction, which feeds text to sympy's ``parse_expr`` (an ``eval``), is never
   used. Texts that would be expensive to evaluate symbolically (a power in an exponent, a huge exponent, factorial or
   binomial, a product of large numbers in an exponent) are compared as strings only.

Agreement with Math-Verify's own regression cases (249 rows, gold as written): 247/249, see
``tests/functional/rewards/test_math_verify_agreement.py`` for the two deliberate differences.

When run in a process's main thread, math-verify's own alarm-based timeouts apply as well; a sample whose check
ran into one, with no other check matching, has status ``timeout`` (math-verify itself would answer "not equal", a 0
that reads as a wrong answer). Off the main thread nothing inside this process can bound a symbolic computation, which
is why the adapters score through the worker pool (:mod:`nemotron_plugins.rewards.pool`, a hard per-sample kill and a
memory cap) by default.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

from nemotron_plugins.rewards.base import RewardResult, RewardSample, RewardStatus, SampleReward
from nemotron_plugins.rewards.text import last_boxed, max_nesting, split_think, truncate

logger = logging.getLogger(__name__)

#: Per thread: math-verify timeouts met while scoring the current sample.
_TIMEOUTS = threading.local()

_FORBIDDEN = re.compile(
    r"__|\bimport\b|\blambda\b|\beval\b|\bexec\b|\bcompile\b|\bgetattr\b|\bsetattr\b|\bglobals\b|\blocals\b"
    r"|\bsubprocess\b|\bsystem\s*\(|\bopen\s*\(|\bos\.|\bsys\.|[\"`@]|\\(?:input|include|write|def|catcode)\b"
)
_FORBIDDEN_REGION = re.compile(
    r"__|\bimport\s+\w|\blambda\s*\w*:|\beval\s*\(|\bexec\s*\(|\bgetattr\s*\(|\bsubprocess\b|\bos\.system"
    r"|\\(?:input|include|write|def|catcode)\b"
)
_POWER_IN_EXPONENT = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\(?\s*[\w.]+\s*\)?\s*\^|\^\s*\{[^{}]*\{[^{}]*\^")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*\(?\s*-?\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*!|\\\w+\{\s*\d{4,}\s*\}\s*!")
# An exponent that multiplies large numbers (10^{9999*9999}) and binomials of large numbers (\binom{99999999}{4999}).
_BIG_EXPONENT_PRODUCT = re.compile(r"\^\s*\{[^{}]*\d{3,}\s*(?:\*|\\times|\\cdot)\s*\d{3,}")
_BIG_BINOM = re.compile(r"\\[dt]?binom\s*\{\s*\d{5,}|\\[dt]?binom\s*\{[^{}]*\}\s*\{\s*\d{5,}|\bC\(\s*\d{5,}")
_ANSWER_LINE = re.compile(r"\b(?:final\s+answer|answer)\b\s*(?:is\b|:|=)?\s*[:=]?\s*", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.{0,2000}?)</answer>", re.IGNORECASE | re.DOTALL)
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


_STANDALONE_NUMBER = re.compile(r"(?<![A-Za-z\d.,_^{])-?\d[\d,]*(?:\.\d+)?(?![\d\\^{(])")
_IS_CLAUSE = re.compile(r"\bis\s+(?=\S)")
_WORD = re.compile(r"[A-Za-z]{3,}")
#: A ground truth that is only words ("Answer is forty two."): nothing a math checker can compare.
_PROSE = re.compile(r"[A-Za-z][A-Za-z'-]*(?:[ ,]+[A-Za-z][A-Za-z'-]*)+[.!]?")
_THOUSANDS_LIST = re.compile(r"\d,\s")
_DECIMAL_COMMA = re.compile(r"[+-]?(\d+),(\d+)")
_UNIT_TAIL = re.compile(
    r"(?:\\?%|\\?\$|€|£|¥|m²|m\^2|cm|km|kg|g|m|s|h|units?|dollars?|cents?|yuan|euros?|degrees?|\^\\circ|°)\.?$",
    re.IGNORECASE,
)


def parse_plain_number(s: str) -> Fraction | None:
    """An exact :class:`Fraction` for a plain number, or ``None``.

    Accepts ``1,234`` and ``1 000`` (thousands separators), ``1000,99`` / ``0,111`` / ``2,74`` (an unambiguous decimal
    comma: not exactly three digits after it, or a zero integer part), ``-2.5``, ``.4``, ``3/4``, ``\\frac{3}{4}``,
    ``x = 5``, a leading or trailing currency sign and percent. ``32, 349`` (a comma followed by a space) is a list,
    not a number.

    Example:
        >>> parse_plain_number("1,234"), parse_plain_number("1000,99"), parse_plain_number("32, 349")
        (Fraction(1234, 1), Fraction(100099, 100), None)
    """
    if len(s) > 200 or _THOUSANDS_LIST.search(s):
        return None
    s = _cheap_normalize(s.replace("\\$", "").replace("€", "").replace("£", ""))
    lhs = _LHS.match(s)
    if lhs:
        s = s[lhs.end() :]
    try:
        dec = _DECIMAL_COMMA.fullmatch(s)
        if dec and (len(dec.group(2)) != 3 or dec.group(1) == "0"):
            return Fraction(s.replace(",", "."))
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


def precheck_latex(s: str, *, max_chars: int, max_depth: int, allow_dollar: bool = False) -> str | None:
    """Why ``s`` may not reach a parser, or ``None`` when it may. Never evaluates anything.

    ``allow_dollar`` admits ``$`` (math delimiters in a ground truth such as ``$\\frac{1}{2}$`` or a whole reply
    region handed to math-verify's LaTeX extraction); a bare answer candidate may not contain one.
    """
    if not s.strip():
        return "empty answer"
    if len(s) > max_chars:
        return f"answer has {len(s)} characters (bound {max_chars})"
    depth = max_nesting(s)
    if depth > max_depth:
        return f"answer nests brackets {depth} deep (bound {max_depth})"
    if s.count("{") != s.count("}"):
        return "answer has unbalanced braces"
    if not allow_dollar and "$" in s.replace("\\$", ""):
        return "answer contains '$'"
    m = _FORBIDDEN.search(s)
    if m:
        return f"answer contains forbidden token {m.group(0)!r}"
    if any(ord(c) < 32 and c not in "\t\n\r" for c in s):
        return "answer contains control characters"
    return None


def is_expensive(s: str) -> bool:
    """True for answers whose symbolic evaluation could explode (power towers, huge exponents or factorials)."""
    return bool(
        _POWER_IN_EXPONENT.search(s)
        or _BIG_EXPONENT.search(s)
        or _BIG_FACTORIAL.search(s)
        or _BIG_EXPONENT_PRODUCT.search(s)
        or _BIG_BINOM.search(s)
    )


def strip_math_delimiters(s: str) -> str:
    """``s`` without one pair of outer math delimiters (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``), a
    single outer ``\\boxed{}`` and currency signs (``\\$18.90``); the text itself when it has none.

    Example:
        >>> strip_math_delimiters("$\\\\frac{1}{2}$"), strip_math_delimiters("\\\\$18.90"), strip_math_delimiters("$$x$$")
        ('\\\\frac{1}{2}', '18.90', 'x')
    """
    t = s.strip().replace("\\$", "")
    for _ in range(3):
        before = t
        for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if t.startswith(open_) and t.endswith(close) and len(t) >= len(open_) + len(close):
                inner = t[len(open_) : len(t) - len(close)]
                if "$" not in inner and "\\(" not in inner and "\\[" not in inner:
                    t = inner.strip()
                    break
        if t.startswith(("\\boxed", "\\fbox")):
            inner = last_boxed(t)
            if inner is not None and t.rstrip(" .").endswith("}") and t.count("\\boxed") + t.count("\\fbox") == 1:
                t = inner.strip()
        if t == before:
            break
    return t.rstrip(".").strip() if t.endswith(".") and not t.endswith("..") else t


def _is_compound(s: str) -> bool:
    """Text that is not one math expression: several math spans or boxes, or math mixed with prose."""
    return "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s


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
    tag = None
    for tag in _ANSWER_TAG.finditer(tail):  # noqa: B007 - we want the last match
        pass
    if tag is not None and _clean_plain(tag.group(1)):
        return _clean_plain(tag.group(1)), False
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


def _last_numbers(cand: str, completion: str) -> list[str]:
    """The last standalone number of ``cand`` and of the answer region's last line (at most one each)."""
    out = []
    lines = [ln for ln in split_think(completion).answer[-4000:].split("\n") if ln.strip()]
    for text in (cand, lines[-1] if lines else ""):
        numbers = _STANDALONE_NUMBER.findall(text[-2000:])
        if numbers and parse_plain_number(numbers[-1].rstrip(",")) is not None:
            out.append(numbers[-1].rstrip(","))
    return out


def _clean_plain(line: str) -> str:
    s = line.strip().strip("*").strip()
    clause = None
    for clause in _IS_CLAUSE.finditer(s):  # noqa: B007 - "The volume of $ABCD$ is 120": what follows the last "is"
        pass
    if clause is not None and _WORD.search(s, 0, clause.start()):
        s = s[clause.end() :]
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
        region_chars: How much of the end of the answer region math-verify's own extraction reads when the
            extracted candidate does not match.
        max_gold_chars: Bound on a ground truth written as text with math in it (``$1$ and $2$``, a worked solution
            whose last box is the answer).
        allow_set_relation_comp: math-verify's option: an interval equals the matching inequality
            (``x \\in [-2, 7]`` vs ``-2 \\le x \\le 7``).

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
        region_chars: int = 3000,
        max_gold_chars: int = 8000,
        allow_set_relation_comp: bool = False,
    ) -> None:
        if mode not in ("auto", "boxed"):
            raise ValueError(f"math: mode must be 'auto' or 'boxed', got {mode!r}")
        self.mode = mode
        self.max_answer_chars = max_answer_chars
        self.max_depth = max_depth
        self.timeout_s = timeout_s
        self.float_rounding = float_rounding
        self.max_completion_chars = max_completion_chars
        self.region_chars = region_chars
        self.max_gold_chars = max_gold_chars
        self.allow_set_relation_comp = allow_set_relation_comp

    def warmup(self) -> None:
        """Run one symbolic comparison so lazy imports and parser set-up happen now (pool workers call this before
        reporting ready, so the first real sample does not pay for it against its timeout)."""
        self._math_verify("$(x+1)^2$", "$x^2+2x+1$")

    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample (see the module docstring)."""
        _TIMEOUTS.count = 0
        result = self._score(sample)
        if result.ok and result.score == 0.0 and _TIMEOUTS.count:
            return RewardResult(
                score=0.0,
                status=RewardStatus.TIMEOUT,
                components=result.components,
                message=f"math: math-verify's own timeout ({self.timeout_s:g} s) ran out before a verdict",
            )
        return result

    def _score(self, sample: RewardSample) -> RewardResult:
        gold_raw = _ground_truth_text(sample.ground_truth)
        if gold_raw is None:
            return RewardResult.invalid(
                f"math: ground_truth must be a non-empty string or number, got {truncate(repr(sample.ground_truth))}"
            )
        bound = self.max_gold_chars if _is_compound(gold_raw) else self.max_answer_chars
        reason = precheck_latex(gold_raw, max_chars=bound, max_depth=self.max_depth, allow_dollar=True)
        if reason:
            return RewardResult.invalid(f"math: ground_truth rejected: {reason}")
        gold = strip_math_delimiters(gold_raw)
        if not gold:
            return RewardResult.invalid("math: ground_truth is empty once its math delimiters are removed")
        if _PROSE.fullmatch(gold):
            return RewardResult.invalid(
                f"math: ground_truth {truncate(gold)!r} is prose, not a math answer (no number or LaTeX to compare); "
                "score such answers with llm_judge"
            )

        cand, boxed = extract_answer(sample.completion, mode=self.mode)
        if cand is None:
            return RewardResult(
                score=0.0, components={"extracted": 0.0, "boxed": 0.0}, message="no final answer found"
            )
        components = {"extracted": 1.0, "boxed": 1.0 if boxed else 0.0}
        cand = strip_math_delimiters(cand)
        if cand.count("$") == 1:  # a currency sign: "$1,000.99", "1,000.99$"
            cand = cand.replace("$", "").strip()
        reason = precheck_latex(cand, max_chars=self.max_answer_chars, max_depth=self.max_depth)
        correct = False
        if not _is_compound(gold):
            if not reason:
                correct = self._equivalent(gold, cand)
            if not correct and parse_plain_number(gold) is not None:
                # A number stated with words or units around it: "it's 1,000.99m²", "Soucis : 2,74 $ a..", a last
                # line "... increases by 100%.": the last standalone number of the candidate, else of the last line.
                correct = any(self._equivalent(gold, number) for number in _last_numbers(cand, sample.completion))
        if not correct and not reason and _is_compound(gold):
            correct = self._verify_texts(gold_raw, f"${cand}$")
        if not correct:
            # math-verify's own LaTeX extraction over the gold as written and the reply's answer region: several
            # boxes, "$1$ and $2$", answers stated in prose. Bounded by size, nesting and the expensive-form check.
            correct = self._verify_regions(gold_raw if _is_compound(gold) else f"${gold}$", sample.completion, boxed)
        if not correct and reason:
            return RewardResult(score=0.0, components=components, message=f"answer not checked: {reason}")
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
        return self._math_verify(f"${gold}$", f"${cand}$")

    def _verify_regions(self, gold_text: str, completion: str, boxed: bool) -> bool:
        region = split_think(completion).answer
        if self.mode == "boxed" and not boxed:
            return False
        region = region[-self.region_chars :]
        if not region.strip() or is_expensive(region) or is_expensive(gold_text):
            return False
        if precheck_region(region, max_depth=self.max_depth) or _FORBIDDEN.search(gold_text):
            return False
        return self._math_verify(gold_text, region)

    def _verify_texts(self, gold_text: str, cand_text: str) -> bool:
        if is_expensive(gold_text) or is_expensive(cand_text) or _FORBIDDEN.search(gold_text):
            return False
        return self._math_verify(gold_text, cand_text)

    def _math_verify(self, gold: str, cand: str) -> bool:
        """math-verify's LaTeX-only parse of two texts (math delimiters included) and its ``verify``, pair by pair as
        math-verify does (an error in one pair is "not equal" for that pair); a timeout is counted, not hidden."""
        from math_verify import verify
        from math_verify.errors import TimeoutException

        timeout = max(1, math.ceil(self.timeout_s)) if _main_thread() else None
        gold_parsed = _parse_latex(gold, timeout)
        if not gold_parsed:
            return False
        cand_parsed = _parse_latex(cand, timeout)
        if not cand_parsed:
            return False
        for g in gold_parsed:
            for c in cand_parsed:
                try:
                    if verify(
                        g,
                        c,
                        float_rounding=self.float_rounding,
                        timeout_seconds=timeout,
                        allow_set_relation_comp=self.allow_set_relation_comp,
                        raise_on_error=True,
                    ):
                        return True
                except TimeoutException:
                    _TIMEOUTS.count = getattr(_TIMEOUTS, "count", 0) + 1
                except Exception:  # noqa: BLE001 - math-verify's own rule: an error in a comparison is "not equal"
                    logger.debug("math-verify comparison error", exc_info=True)
        return False


def precheck_region(region: str, *, max_depth: int) -> str | None:
    """Why a reply region may not reach math-verify's LaTeX extraction: bracket nesting, unbalanced braces (an
    unclosed ``\\boxed{`` is not an answer), Python bait (the LaTeX parser never evaluates text; this is defence in
    depth)."""
    depth = max_nesting(region)
    if depth > max_depth:
        return f"reply nests brackets {depth} deep (bound {max_depth})"
    if region.count("{") - region.count("\\{") != region.count("}") - region.count("\\}"):
        return "reply has unbalanced braces"
    m = _FORBIDDEN_REGION.search(region)
    if m:
        return f"reply contains forbidden token {m.group(0)!r}"
    return None


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
def _parse_cached(text: str, timeout: int | None) -> tuple[Any, ...]:
    from math_verify import LatexExtractionConfig, parse

    config = LatexExtractionConfig(boxed_match_priority=0)
    return tuple(parse(text, extraction_config=[config], parsing_timeout=timeout, raise_on_error=True))


def _parse_latex(latex: str, timeout: int | None) -> tuple[Any, ...]:
    """math-verify's LaTeX parse of a pre-checked string (never its ``parse_expr`` path); nothing when it fails, as in
    math-verify, and a timeout is counted for the sample."""
    from math_verify.errors import TimeoutException

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        return _parse_cached(latex, timeout)
    except TimeoutException:
        _TIMEOUTS.count = getattr(_TIMEOUTS, "count", 0) + 1
    except Exception:  # noqa: BLE001 - math-verify's own rule: a parse error is no parse
        logger.debug("math-verify parse error", exc_info=True)
    return ()
