"""``mcq``: multiple-choice letter extraction (A-J, GPQA / MMLU-Pro style) and exact letter match.

The answer region is the text after the last ``</think>``, NFKC-normalised so full-width forms (``Ｃ``, ``（Ｃ）``,
``答案：Ｃ``) read as their ASCII letters. The letter is taken, in order of preference, from the last
``\\boxed{B}`` (also ``\\boxed{\\text{B}}``, ``\\boxed{(B)}``), the last ``Answer: B`` / ``the answer is (B)`` /
``correct option: **B**`` phrase (also in other scripts: ``答案: C``, ``答案是C``, ``正确答案为 C``, ``答え: C``,
``정답: C``, ``Ответ: C``, ``Respuesta: C``, ``Réponse : C``, ``Antwort: C``, ``الإجابة: C``), a reply that is only a letter (``B``, ``(B)``, ``B.``, ``**B)**``), or the last
line that starts with a letter option (``B) 42``). Letters are case-insensitive only where they cannot be words.

Ground truth: a letter (``"C"``, ``"(c)"``), or a 0-based option index; ``metadata["choices"]`` (a list of option
texts) limits the valid letters to its length.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from nemotron_plugins.rewards.base import RewardResult, RewardSample, SampleReward
from nemotron_plugins.rewards.text import last_boxed, split_think

LETTERS = "ABCDEFGHIJ"
_L = "A-J"
_BOXED_LETTER = re.compile(rf"^\s*(?:\\text(?:bf)?\{{\s*)?\(?\s*([{_L}])\s*\)?\s*\}}?\s*(?:[.):].*)?$", re.S)
_ANSWER_WORDS = (
    r"answer|option|choice|答案|选项|選項|正确答案|正確答案|答え|正解|정답|답|ответ|вариант|respuesta|réponse|resposta"
    r"|antwort|risposta|الإجابة|الجواب"
)
_ANSWER_PHRASE = re.compile(
    rf"(?:{_ANSWER_WORDS})(?:\s+is)?(?:\s+(?:option|choice))?\s*(?:是|为|為|は|는|은|:)?\s*(?:is\s*)?[*_$\s]*"
    rf"(?:\\boxed\{{\s*)?(?:\\text\{{\s*)?[\[(]?\s*([{_L}])\b(?![a-zA-Z'])",
    re.IGNORECASE,
)
_ONLY_LETTER = re.compile(rf"^[\s*_$]*[\[(]?\s*([{_L}])\s*[\])]?[.:]?[\s*_$]*$")
_OPTION_LINE = re.compile(rf"^[\s*_]*[\[(]?([{_L}])[\])][\s*_.:]", re.M)


def extract_choice(completion: str, letters: str = LETTERS, *, tail_chars: int = 4000) -> str | None:
    """The chosen option letter of ``completion`` (uppercase), or ``None``.

    Example:
        >>> extract_choice("<think>B looks wrong</think>The correct answer is (C).")
        'C'
    """
    region = unicodedata.normalize("NFKC", split_think(completion).answer[-tail_chars:])
    boxed = last_boxed(region)
    if boxed is not None:
        m = _BOXED_LETTER.match(boxed)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    found = None
    for m in _ANSWER_PHRASE.finditer(region):
        letter = m.group(1)
        # A lowercase letter counts only when written as an option: "answer: (b)" or "answer: b" at line end.
        if letter.islower() and not re.match(r"\s*(?:[).:]|$)", region[m.end() :], re.M):
            continue
        if letter.upper() in letters:
            found = letter.upper()
    if found:
        return found
    m = _ONLY_LETTER.match(region)
    if m and m.group(1) in letters:
        return m.group(1)
    lines = _OPTION_LINE.findall(region)
    if lines and lines[-1] in letters and len(set(lines)) == 1:
        return lines[-1]
    return None


def _gold_letter(gt: Any, letters: str) -> str | None:
    if isinstance(gt, bool):
        return None
    if isinstance(gt, int) and 0 <= gt < len(letters):
        return letters[gt]
    if isinstance(gt, str):
        m = _ONLY_LETTER.match(unicodedata.normalize("NFKC", gt).strip().upper())
        if m and m.group(1) in letters:
            return m.group(1)
    return None


class MultipleChoiceReward(SampleReward):
    """1.0 when the extracted option letter equals the ground-truth letter, else 0.0.

    Args:
        letters: The valid option letters (default ``A``-``J``).

    Components: ``extracted`` (a letter was found).

    Example:
        >>> r = MultipleChoiceReward()
        >>> [x.score for x in r.score([RewardSample(completion="Answer: **D**", ground_truth="D")])]
        [1.0]
    """

    name = "mcq"

    def __init__(self, *, letters: str = LETTERS, max_completion_chars: int = 1_000_000) -> None:
        if not letters or not letters.isalpha() or not letters.isupper():
            raise ValueError(f"mcq: letters must be uppercase letters such as 'ABCD', got {letters!r}")
        self.letters = letters
        self.max_completion_chars = max_completion_chars

    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample."""
        letters = self.letters
        choices = sample.metadata.get("choices") if isinstance(sample.metadata, Mapping) else None
        if isinstance(choices, Sequence) and not isinstance(choices, str) and 0 < len(choices) <= len(self.letters):
            letters = self.letters[: len(choices)]
        gold = _gold_letter(sample.ground_truth, letters)
        if gold is None:
            return RewardResult.invalid(
                f"mcq: ground_truth must be one of the letters {letters} (or a 0-based index), got {sample.ground_truth!r}"
            )
        letter = extract_choice(sample.completion, letters)
        if letter is None:
            return RewardResult(score=0.0, components={"extracted": 0.0}, message="no option letter found")
        return RewardResult(score=1.0 if letter == gold else 0.0, components={"extracted": 1.0})
