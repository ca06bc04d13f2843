"""``ifeval``: IFEval-style instruction verifiers (strict checks, one component per instruction).

Ground truth, either IFEval's own row format::

    {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "at least", "num_words": 50}]}

or a list of instructions with their arguments inline::

    [{"id": "punctuation:no_comma"}, {"id": "length_constraints:number_words", "relation": "at least", "num_words": 50}]

(``None``-valued arguments are dropped, as in the HF IFEval dump). The response checked is the text after the last
``</think>``. The score is the fraction of instructions followed (``aggregate="fraction"``, the default, a denser RL
signal) or 1.0 only when all are (``aggregate="all"``, IFEval's prompt-level strict accuracy). Components are
``"<instruction_id>"`` -> 1.0 / 0.0 (``"#2"`` etc. appended when an id repeats).

The supported instruction ids are the keys of :data:`VERIFIERS`: all 25 of IFEval's instruction types, plus
``startend:start_checker``.
``language:response_language`` uses langdetect (the detector Google's reference checker uses, seeded so a verdict is
reproducible; text langdetect cannot classify, such as digits only, counts as followed, as in the reference), and so do
``change_case:english_lowercase`` / ``english_capital``, which, as in the reference, also require the text to be
detected as English. Each check follows the reference checker's rules (agreement on Google's published GPT-4 sample
responses: ``tests/unit/rewards/test_rewards_ifeval_reference.py``). An
unknown id or a missing argument makes the sample invalid input with a message naming the instruction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nemotron_plugins.rewards.base import RewardResult, RewardSample, SampleReward
from nemotron_plugins.rewards.text import split_think

_RELATIONS = ("less than", "at least")


class InstructionError(ValueError):
    """An instruction's id or arguments are invalid."""


def _compare(value: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return value < target
    if relation == "at least":
        return value >= target
    raise InstructionError(f"relation must be one of {_RELATIONS}, got {relation!r}")


def count_words(text: str) -> int:
    """Words as runs of word characters (IFEval counts ``\\w+`` tokens)."""
    return len(re.findall(r"\w+", text))


_SENTENCE_END = re.compile(r"[.!?]+(?=[\s\"')\]]|$)")
_ABBREVIATIONS = frozenset({"mr", "ms", "mrs", "dr", "st", "vs", "etc", "e.g", "i.e", "prof", "jr", "sr", "no"})


def split_sentences(text: str) -> list[str]:
    """Sentences: text split after ``.``, ``!`` or ``?`` runs followed by whitespace or the end.

    A single ``.`` does not end a sentence after a common abbreviation (``Mr.``, ``e.g.``) or a one-letter initial,
    nor after a number when the next word starts in lower case (``1. affordable kits``: a list marker), as NLTK's
    Punkt model (the reference checker's sentence splitter) decides for numbers.
    """
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.group(0) == ".":
            word = re.search(r"([\w.]+)$", text[max(0, m.start() - 12) : m.start()])
            if word and (
                word.group(1).lower() in _ABBREVIATIONS or (len(word.group(1)) == 1 and word.group(1).isupper())
            ):
                continue
            if word and word.group(1).isdigit() and re.match(r"\s+[a-z]", text[m.end() : m.end() + 8]):
                continue
        parts.append(text[start : m.end()])
        start = m.end()
    parts.append(text[start:])
    return [p.strip() for p in parts if re.search(r"\w", p)]


def _number_words(r: str, *, num_words: int, relation: str) -> bool:
    return _compare(count_words(r), relation, int(num_words))


def _number_sentences(r: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(len(split_sentences(r)), relation, int(num_sentences))


def _number_paragraphs(r: str, *, num_paragraphs: int) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i == 0 or i == len(paragraphs) - 1:
                count -= 1
            else:
                return False
    return count == int(num_paragraphs)


def _nth_paragraph_first_word(r: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    # The reference checker's rules: paragraphs split on "\n\n" and counted when non-blank, the nth taken from the
    # split itself; the first word is the first whitespace token less leading quotes, cut at the first of . , ? ! ' "
    # (so "Summary:" is "summary:", not "summary").
    paragraphs = r.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    nth = int(nth_paragraph)
    if not 1 <= nth <= count:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == int(num_paragraphs) and word == first_word.strip().lower()


def _keywords_existence(r: str, *, keywords: Sequence[str]) -> bool:
    return all(re.search(re.escape(k), r, re.IGNORECASE) for k in keywords)


def _forbidden_words(r: str, *, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, re.IGNORECASE) for w in forbidden_words)


def _keyword_frequency(r: str, *, keyword: str, frequency: int, relation: str) -> bool:
    # The keyword is stripped, as the reference checker does ("  keyword " counts "keyword").
    return _compare(len(re.findall(re.escape(keyword.strip()), r, re.IGNORECASE)), relation, int(frequency))


def _letter_frequency(r: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    if len(letter) != 1:
        raise InstructionError(f"letter must be a single character, got {letter!r}")
    return _compare(r.lower().count(letter.lower()), let_relation, int(let_frequency))


def _json_format(r: str) -> bool:
    s = r.strip()
    s = re.sub(r"^```(?:json|JSON|Json)?\s*", "", s)
    s = re.sub(r"\s*```$", "", s).strip()
    try:
        json.loads(s)
    except (ValueError, RecursionError):
        return False
    return True


def _number_bullet_lists(r: str, *, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, re.MULTILINE)
    return len(stars) + len(dashes) == int(num_bullets)


def _title(r: str) -> bool:
    return any(t.strip("<> \t") for t in re.findall(r"<<[^\n]+>>", r))


def _multiple_sections(r: str, *, section_spliter: str, num_sections: int) -> bool:
    parts = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= int(num_sections)


def _highlighted_sections(r: str, *, num_highlights: int) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return count >= int(num_highlights)


_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained_response(r: str) -> bool:
    return any(option in r.strip() for option in _CONSTRAINED)


def _detect_language(text: str) -> str | None:
    """The language langdetect sees in ``text`` (seeded, so a verdict is reproducible; the first 20,000 characters),
    or ``None`` when it cannot classify the text (digits or punctuation only)."""
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError as exc:
        raise ImportError(
            "ifeval: language and English-case checks need langdetect: pip install 'nemotron-plugins[rewards]'"
        ) from exc

    DetectorFactory.seed = 0
    try:
        return detect(text[:20_000]).lower()
    except LangDetectException:
        return None


def _is_english(text: str) -> bool:
    # Text langdetect cannot classify counts as English, as in the reference checker.
    return _detect_language(text) in (None, "en")


def _english_lowercase(r: str) -> bool:
    # As the reference: all cased characters lower case, at least one, and the text detected as English.
    return r.islower() and _is_english(r)


def _english_capital(r: str) -> bool:
    return r.isupper() and _is_english(r)


# Word tokens as NLTK's word_tokenize cuts them for counting capitalised words: punctuation apart, hyphenated
# words one token, a contraction two ("IT'S" -> "IT" "'S"), letters and digits together ("B5" is a capital word).
_WORD_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


def _capital_word_frequency(r: str, *, capital_frequency: int, capital_relation: str) -> bool:
    capitals = [w for w in _WORD_TOKEN.findall(r) if w.isupper()]
    return _compare(len(capitals), capital_relation, int(capital_frequency))


def _no_comma(r: str) -> bool:
    return "," not in r


def _end_checker(r: str, *, end_phrase: str) -> bool:
    # Surrounding double quotes are ignored, as in the reference checker.
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _start_checker(r: str, *, start_phrase: str) -> bool:
    return r.strip().lower().startswith(start_phrase.strip().lower())


def _quotation(r: str) -> bool:
    s = r.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


def _placeholders(r: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[[^\[\]\n]*\]", r)) >= int(num_placeholders)


def _postscript(r: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    low = r.lower()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, low, flags=re.MULTILINE))


def _repeat_prompt(r: str, *, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _response_language(r: str, *, language: str) -> bool:
    if not isinstance(language, str) or not re.fullmatch(r"[a-z]{2,3}(?:-[a-z]{2})?", language.strip().lower()):
        raise InstructionError(f"language must be an ISO 639-1 code such as 'en' or 'de', got {language!r}")
    # Nothing to classify (digits, punctuation) counts as followed, as in the reference checker.
    return _detect_language(r) in (None, language.strip().lower())


def _two_responses(r: str) -> bool:
    parts = r.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(p.strip())
    return len(valid) == 2 and valid[0] != valid[1]


@dataclass(frozen=True, slots=True)
class Verifier:
    """One instruction type: its check and the arguments it needs."""

    check: Callable[..., bool]
    """``check(response, **kwargs) -> bool``."""
    required: tuple[str, ...] = ()
    """Argument names that must be present."""
    defaults: tuple[tuple[str, Any], ...] = ()
    """Arguments with a default (IFEval's defaults where it has one)."""


#: Instruction id -> verifier.
VERIFIERS: dict[str, Verifier] = {
    "length_constraints:number_words": Verifier(_number_words, ("num_words", "relation")),
    "length_constraints:number_sentences": Verifier(_number_sentences, ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": Verifier(_number_paragraphs, ("num_paragraphs",)),
    "length_constraints:nth_paragraph_first_word": Verifier(
        _nth_paragraph_first_word, ("num_paragraphs", "nth_paragraph", "first_word")
    ),
    "keywords:existence": Verifier(_keywords_existence, ("keywords",)),
    "keywords:forbidden_words": Verifier(_forbidden_words, ("forbidden_words",)),
    "keywords:frequency": Verifier(_keyword_frequency, ("keyword", "frequency", "relation")),
    "keywords:letter_frequency": Verifier(_letter_frequency, ("letter", "let_frequency", "let_relation")),
    "detectable_format:json_format": Verifier(_json_format),
    "detectable_format:number_bullet_lists": Verifier(_number_bullet_lists, ("num_bullets",)),
    "detectable_format:title": Verifier(_title),
    "detectable_format:multiple_sections": Verifier(
        _multiple_sections, ("num_sections",), (("section_spliter", "Section"),)
    ),
    "detectable_format:number_highlighted_sections": Verifier(_highlighted_sections, ("num_highlights",)),
    "detectable_format:constrained_response": Verifier(_constrained_response),
    "change_case:english_lowercase": Verifier(_english_lowercase),
    "change_case:english_capital": Verifier(_english_capital),
    "change_case:capital_word_frequency": Verifier(_capital_word_frequency, ("capital_frequency", "capital_relation")),
    "punctuation:no_comma": Verifier(_no_comma),
    "startend:end_checker": Verifier(_end_checker, ("end_phrase",)),
    "startend:start_checker": Verifier(_start_checker, ("start_phrase",)),
    "startend:quotation": Verifier(_quotation),
    "detectable_content:number_placeholders": Verifier(_placeholders, ("num_placeholders",)),
    "detectable_content:postscript": Verifier(_postscript, ("postscript_marker",)),
    "combination:repeat_prompt": Verifier(_repeat_prompt, ("prompt_to_repeat",)),
    "combination:two_responses": Verifier(_two_responses),
    "language:response_language": Verifier(_response_language, ("language",)),
}


def parse_instructions(gt: Any) -> list[tuple[str, dict[str, Any]]]:
    """Normalise an ifeval ground truth to ``[(instruction_id, kwargs), ...]``, validating ids and arguments.

    Raises:
        InstructionError: naming the instruction index and what is wrong.
    """
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise InstructionError(f"ground_truth string is not JSON: {exc}") from exc
    items: list[tuple[Any, Any]]
    if isinstance(gt, Mapping) and "instruction_id_list" in gt:
        ids = gt["instruction_id_list"]
        kwargs_list = gt.get("kwargs") or [{} for _ in ids]
        if not isinstance(ids, list) or not isinstance(kwargs_list, list) or len(ids) != len(kwargs_list):
            raise InstructionError("'instruction_id_list' and 'kwargs' must be lists of the same length")
        items = list(zip(ids, kwargs_list, strict=True))
    elif isinstance(gt, list):
        items = []
        for i, entry in enumerate(gt):
            if not isinstance(entry, Mapping):
                raise InstructionError(f"instruction {i}: expected an object with 'id', got {type(entry).__name__}")
            entry = dict(entry)
            items.append((entry.pop("id", entry.pop("instruction_id", None)), entry))
    else:
        raise InstructionError(
            "ground_truth must be {'instruction_id_list': [...], 'kwargs': [...]} or a list of {'id': ..., **kwargs}"
        )
    if not items:
        raise InstructionError("ground_truth has no instructions")
    out = []
    for i, (iid, kwargs) in enumerate(items):
        if iid not in VERIFIERS:
            raise InstructionError(f"instruction {i}: unknown id {iid!r}; supported: {', '.join(sorted(VERIFIERS))}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise InstructionError(f"instruction {i} ({iid}): kwargs must be an object, got {type(kwargs).__name__}")
        verifier = VERIFIERS[iid]
        args = dict(verifier.defaults)
        args.update({k: v for k, v in kwargs.items() if v is not None})
        missing = [k for k in verifier.required if k not in args]
        if missing:
            raise InstructionError(f"instruction {i} ({iid}): missing argument(s) {missing}")
        known = set(verifier.required) | {k for k, _ in verifier.defaults}
        out.append((iid, {k: v for k, v in args.items() if k in known}))
    return out


class IFEvalReward(SampleReward):
    """Fraction (or all) of the sample's IFEval instructions that the response follows.

    Args:
        aggregate: ``"fraction"`` (default) or ``"all"``.

    Example:
        >>> r = IFEvalReward()
        >>> gt = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}
        >>> res = r.score([RewardSample(completion="hello there, friend", ground_truth=gt)])[0]
        >>> res.score, dict(res.components)
        (0.5, {'punctuation:no_comma': 0.0, 'change_case:english_lowercase': 1.0})
    """

    name = "ifeval"

    def __init__(self, *, aggregate: str = "fraction", max_completion_chars: int = 200_000) -> None:
        if aggregate not in ("fraction", "all"):
            raise ValueError(f"ifeval: aggregate must be 'fraction' or 'all', got {aggregate!r}")
        self.aggregate = aggregate
        self.max_completion_chars = max_completion_chars

    def score_sample(self, sample: RewardSample) -> RewardResult:
        """Score one sample."""
        try:
            instructions = parse_instructions(sample.ground_truth)
        except InstructionError as exc:
            return RewardResult.invalid(f"ifeval: {exc}")
        response = split_think(sample.completion).answer
        components: dict[str, float] = {}
        followed = 0
        for i, (iid, kwargs) in enumerate(instructions):
            try:
                ok = bool(VERIFIERS[iid].check(response, **kwargs))
            except (InstructionError, ValueError, TypeError) as exc:
                return RewardResult.invalid(f"ifeval: instruction {i} ({iid}): bad arguments {kwargs}: {exc}")
            key = iid if iid not in components else f"{iid}#{sum(k.split('#')[0] == iid for k in components) + 1}"
            components[key] = 1.0 if ok else 0.0
            followed += ok
        if self.aggregate == "all":
            score = 1.0 if followed == len(instructions) else 0.0
        else:
            score = followed / len(instructions)
        return RewardResult(score=score, components=components)
