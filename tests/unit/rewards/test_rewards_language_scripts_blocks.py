"""Issue 15: IFEval's ``language:response_language``, MCQ keys in other scripts and full-width forms, tool calls
written one block each. Each case here failed before the fix (unknown instruction, no letter found, last block only).
"""

from __future__ import annotations

import pytest

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.ifeval import VERIFIERS, IFEvalReward
from nemotron_plugins.rewards.mcq import MultipleChoiceReward, extract_choice
from nemotron_plugins.rewards.tool_call import ToolCallReward, tool_blocks

IFEVAL_25 = {
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript", "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response", "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections", "detectable_format:json_format", "detectable_format:title",
    "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
    "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
    "punctuation:no_comma", "startend:quotation",
}  # fmt: skip


def test_all_25_ifeval_instruction_types():
    assert len(IFEVAL_25) == 25
    assert IFEVAL_25 <= set(VERIFIERS)


@pytest.mark.parametrize(
    "text, language, followed",
    [
        ("Das ist ein kurzer deutscher Satz über das Wetter von heute in Berlin.", "de", 1.0),
        ("This is a short English sentence about the weather in Berlin today.", "de", 0.0),
        ("Ceci est une courte phrase en français sur la météo à Paris aujourd'hui.", "fr", 1.0),
        ("Это короткое предложение на русском языке о погоде в Москве сегодня.", "ru", 1.0),
        ("This is a short English sentence about the weather in Berlin today.", "en", 1.0),
        ("12345 67890", "de", 1.0),  # nothing to classify: followed, as in the reference checker
    ],
)
def test_ifeval_response_language(text, language, followed, langdetect):
    gt = {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": language}]}
    [r] = IFEvalReward().score([RewardSample(completion=f"<think>plan</think>{text}", ground_truth=gt)])
    assert r.status is RewardStatus.OK and r.score == followed


def test_ifeval_response_language_bad_code_is_invalid_input():
    gt = {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "German!"}]}
    [r] = IFEvalReward().score([RewardSample(completion="Hallo Welt", ground_truth=gt)])
    assert r.status is RewardStatus.INVALID_INPUT and "ISO 639-1" in r.message


def test_ifeval_sample_with_language_is_kept_among_others(langdetect):
    gt = {
        "instruction_id_list": ["punctuation:no_comma", "language:response_language"],
        "kwargs": [{}, {"language": "es"}],
    }
    text = "Hoy hace buen tiempo en Madrid y vamos a caminar por el parque del Retiro."
    [r] = IFEvalReward().score([RewardSample(completion=text, ground_truth=gt)])
    assert r.ok and r.score == 1.0 and r.components == {"punctuation:no_comma": 1.0, "language:response_language": 1.0}


@pytest.mark.parametrize(
    "text, letter",
    [
        ("答案: C", "C"),
        ("答案：Ｃ", "C"),  # full-width colon and letter
        ("所以答案是C。", "C"),
        ("正确答案为 (B)", "B"),
        ("（Ｄ）", "D"),
        ("答え: A", "A"),
        ("정답: B", "B"),
        ("Ответ: D", "D"),
        ("Respuesta: C", "C"),
        ("Réponse : A", "A"),
        ("Antwort: **B**", "B"),
        ("\\boxed{Ｂ}", "B"),
    ],
)
def test_mcq_keys_in_other_scripts_and_full_width(text, letter):
    assert extract_choice(f"<think>hmm</think>{text}") == letter
    [r] = MultipleChoiceReward().score([RewardSample(completion=text, ground_truth=letter)])
    assert r.ok and r.score == 1.0


def test_mcq_full_width_ground_truth():
    [r] = MultipleChoiceReward().score([RewardSample(completion="Answer: C", ground_truth="Ｃ")])
    assert r.ok and r.score == 1.0


CALLS = [{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "time", "arguments": {"tz": "CET"}}]


@pytest.mark.parametrize(
    "reply, score",
    [
        (  # Hermes: parallel calls, one block each
            '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "time", "arguments": {"tz": "CET"}}</tool_call>',
            1.0,
        ),
        (  # one block with a list
            '<tool_call>[{"name": "time", "arguments": {"tz": "CET"}}, '
            '{"name": "weather", "arguments": {"city": "Paris"}}]</tool_call>',
            1.0,
        ),
        ('<tool_call>{"name": "time", "arguments": {"tz": "CET"}}</tool_call>', 0.0),  # one call missing
        (  # one call too many
            '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
            '<tool_call>{"name": "time", "arguments": {"tz": "CET"}}</tool_call>'
            '<tool_call>{"name": "time", "arguments": {"tz": "CET"}}</tool_call>',
            0.0,
        ),
    ],
)
def test_tool_calls_in_one_block_or_several(reply, score):
    [r] = ToolCallReward().score([RewardSample(completion=f"<think>two tools</think>{reply}", ground_truth=CALLS)])
    assert r.ok and r.score == score and r.components["format"] == 1.0


def test_tool_blocks_are_bounded():
    text = "<tool_call>[]</tool_call>" * 100
    assert len(tool_blocks(text, max_blocks=64)) == 65
    [r] = ToolCallReward().score([RewardSample(completion=f"<think>x</think>{text}", ground_truth=[])])
    assert r.ok and r.score == 0.0 and "more than 64" in r.message
