"""``ifeval``: one passing and one failing response per instruction type."""

from __future__ import annotations

import pytest

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.ifeval import VERIFIERS, IFEvalReward, parse_instructions, split_sentences
from tests.unit.rewards.conftest import LANGDETECT_INSTRUCTIONS, require_langdetect

CASES = [
    # (instruction id, kwargs, passing response, failing response)
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 5},
        "one two three four five",
        "one two",
    ),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 3}, "one two", "one two three"),
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        "Hi. Bye.",
        "One. Two. Three.",
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "at least", "num_sentences": 2},
        "Mr. X came. He left!",
        "Mr. X came.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "first\n***\nsecond", "first\n***\n\n***\nthird"),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "banana"},
        "Apple pie.\n\nBanana, bread.",
        "Apple pie.\n\nCherry bread.",
    ),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "A Cat and a dog.", "A cat only."),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "a badge is fine", "this is bad"),
    ("keywords:frequency", {"keyword": "ai", "frequency": 2, "relation": "at least"}, "AI and ai", "AI once"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "zoo", "zzz"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:title", {}, "<<My Title>>\nbody", "<<>> body"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\na\nSection 2\nb",
        "Section 1\nall",
    ),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("change_case:english_lowercase", {}, "all lower here", "Not lower"),
    ("change_case:english_capital", {}, "ALL CAPS HERE", "Not caps"),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "NASA and ESA",
        "NASA and esa",
    ),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done."),
    ("startend:start_checker", {"start_phrase": "Dear"}, "dear reader", "Hello reader"),
    ("startend:quotation", {}, '"quoted"', "not quoted"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", "[name] only"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S bye", "Hi.\nP.S. bye"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", "Hi!"),
    ("combination:two_responses", {}, "first answer\n******\nsecond answer", "same\n******\nsame"),
    (
        "language:response_language",
        {"language": "it"},
        "Oggi il tempo a Roma è bello e andiamo a fare una passeggiata nel parco.",
        "Today the weather in Rome is nice and we are going for a walk in the park.",
    ),
]


def test_at_least_fifteen_types_covered():
    covered = {c[0] for c in CASES}
    assert len(covered) >= 15
    assert covered == set(VERIFIERS)


@pytest.mark.parametrize("iid, kwargs, good, bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction(iid, kwargs, good, bad):
    if iid in LANGDETECT_INSTRUCTIONS:
        require_langdetect()
    reward = IFEvalReward()
    gt = {"instruction_id_list": [iid], "kwargs": [kwargs]}
    [ok, not_ok] = reward.score(
        [RewardSample(completion=good, ground_truth=gt), RewardSample(completion=bad, ground_truth=gt)]
    )
    assert ok.status is RewardStatus.OK and not_ok.status is RewardStatus.OK
    assert (ok.score, not_ok.score) == (1.0, 0.0)
    assert ok.components == {iid: 1.0} and not_ok.components == {iid: 0.0}


def test_fraction_all_and_repeated_ids(langdetect):
    gt = [
        {"id": "punctuation:no_comma"},
        {"id": "change_case:english_lowercase"},
        {"id": "keywords:existence", "keywords": ["x"]},
        {"id": "keywords:existence", "keywords": ["hello"]},
    ]
    [r] = IFEvalReward().score([RewardSample(completion="<think>Ignore, this</think>hello, world", ground_truth=gt)])
    assert r.score == pytest.approx(0.5)
    assert r.components == {
        "punctuation:no_comma": 0.0,
        "change_case:english_lowercase": 1.0,
        "keywords:existence": 0.0,
        "keywords:existence#2": 1.0,
    }
    assert (
        IFEvalReward(aggregate="all").score([RewardSample(completion="hello, world", ground_truth=gt)])[0].score == 0
    )


def test_response_is_text_after_think():
    gt = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    [r] = IFEvalReward().score([RewardSample(completion="<think>a, b, c</think>no commas", ground_truth=gt)])
    assert r.score == 1.0


def test_hf_dump_none_kwargs_are_dropped():
    gt = {
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{"num_words": None, "relation": None}],
    }
    assert parse_instructions(gt) == [("punctuation:no_comma", {})]


@pytest.mark.parametrize(
    "gt, fragment",
    [
        (None, "ground_truth must be"),
        ({"instruction_id_list": ["nope:nope"], "kwargs": [{}]}, "unknown id 'nope:nope'"),
        ({"instruction_id_list": ["keywords:existence"], "kwargs": [{}]}, "missing argument"),
        ({"instruction_id_list": ["a", "b"], "kwargs": [{}]}, "same length"),
        ([], "no instructions"),
        ("{broken", "not JSON"),
        (
            {
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"relation": "about", "num_words": 3}],
            },
            "relation",
        ),
    ],
)
def test_bad_ground_truth_is_invalid_input(gt, fragment):
    [r] = IFEvalReward().score([RewardSample(completion="text", ground_truth=gt)])
    assert r.status is RewardStatus.INVALID_INPUT
    assert fragment in r.message


def test_split_sentences():
    assert split_sentences("Hello Mr. Smith. How are you? Fine! J. R. R. Tolkien wrote e.g. books.") == [
        "Hello Mr. Smith.",
        "How are you?",
        "Fine!",
        "J. R. R. Tolkien wrote e.g. books.",
    ]


def test_reference_checker_rules_found_on_googles_gpt4_samples(langdetect):
    """The rules that made ``ifeval`` differ from Google's checker on its GPT-4 sample responses (8 of 834 before)."""
    # A number then a lower-case word is a list marker, not a sentence end (NLTK Punkt's rule for numbers).
    assert len(split_sentences("1. affordable kits: these help.\n2. mobile clinics: these help too.")) == 2
    assert len(split_sentences("We counted to 3. Then we stopped.")) == 2
    # The first word is cut at . , ? ! ' " only: "Summary:" is not "summary".
    nth = VERIFIERS["length_constraints:nth_paragraph_first_word"].check
    assert not nth("One.\n\nSummary: two.", num_paragraphs=2, nth_paragraph=2, first_word="summary")
    assert nth('One.\n\n"Summary, two.', num_paragraphs=2, nth_paragraph=2, first_word="summary")
    # Letters with digits are capital words ("B5"), as NLTK's tokens are.
    cap = VERIFIERS["change_case:capital_word_frequency"].check
    assert cap("vitamins B5, B6 and D", capital_frequency=3, capital_relation="at least")
    # English case checks also need the text detected as English (langdetect, seeded), as in the reference.
    lower = VERIFIERS["change_case:english_lowercase"].check
    assert lower("this is a plain sentence written in english, all in lower case.")
    assert not lower("dies ist ein deutscher satz, der ganz in kleinbuchstaben geschrieben ist.")
    assert not VERIFIERS["change_case:english_capital"].check("DIES IST EIN DEUTSCHER SATZ IN GROSSBUCHSTABEN.")
    # Surrounding double quotes do not hide the end phrase.
    assert VERIFIERS["startend:end_checker"].check('"... Any other questions?"', end_phrase="Any other questions?")
