"""Reasoning toggle: system prompts, sampling presets, response parsing and render -> parse round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemotron_plugins.chat.render import EOT_TOKEN, render_chat
from nemotron_plugins.chat.toggle import (
    PARSE_ERRORS,
    format_response,
    get_reasoning,
    parse_response,
    sampling_preset,
    set_reasoning,
)


def test_set_reasoning_inserts_system_prompt_without_mutating():
    messages = [{"role": "user", "content": "q"}]
    out = set_reasoning(messages, "on")
    assert out == [{"role": "system", "content": "detailed thinking on"}, {"role": "user", "content": "q"}]
    assert messages == [{"role": "user", "content": "q"}]
    assert get_reasoning(out) == "on"
    assert get_reasoning(messages) is None


def test_set_reasoning_replaces_toggle_and_keeps_other_system_text():
    messages = [{"role": "system", "content": "You are terse.\ndetailed thinking on\nAnswer in French."}]
    out = set_reasoning(messages, "off")
    assert out[0]["content"] == "detailed thinking off\n\nYou are terse.\n\nAnswer in French."
    assert set_reasoning(out, "on")[0]["content"] == "detailed thinking on\n\nYou are terse.\n\nAnswer in French."
    assert set_reasoning([{"role": "system", "content": "detailed thinking on"}], False)[0]["content"] == (
        "detailed thinking off"
    )
    assert set_reasoning([{"role": "system", "content": "Be kind."}], True)[0]["content"] == (
        "detailed thinking on\n\nBe kind."
    )
    assert messages[0]["content"].startswith("You are terse.")


def test_set_reasoning_rejects_bad_mode():
    with pytest.raises(ValueError, match="'on' or 'off'"):
        set_reasoning([], "maybe")


def test_sampling_presets():
    assert sampling_preset("on") == {"do_sample": True, "temperature": 0.6, "top_p": 0.95}
    off = sampling_preset("off")
    assert off["do_sample"] is False and off["temperature"] == 0.0


@pytest.mark.parametrize(
    ("text", "mode", "codes", "reasoning", "answer"),
    [
        ("<think>\nr\n</think>\n\na", "on", [], "r", "a"),
        ("<think></think>a", "on", [], "", "a"),
        ("  <think>r</think>a", None, [], "r", "a"),
        ("just an answer", "off", [], None, "just an answer"),
        ("just an answer", None, [], None, "just an answer"),
        ("just an answer", "on", ["missing_think"], None, "just an answer"),
        ("<think>r</think>a", "off", ["think_in_off_mode"], "r", "a"),
        ("<think>r never closed", "on", ["unclosed_think", "empty_answer"], "r never closed", ""),
        ("<think>a<think>b</think></think>c", "on", ["nested_think"], "a<think>b</think>", "c"),
        ("r</think>a", "on", ["unopened_think_close"], "r", "a"),
        ("<think>x</think>y<think>z</think>w", "on", ["multiple_think_blocks"], "x</think>y<think>z", "w"),
        ("pre<think>r</think>a", "on", ["text_before_think"], "r", "a"),
        ("<think>r</think>  ", "on", ["empty_answer"], "r", ""),
    ],
)
def test_parse_response_cases(text, mode, codes, reasoning, answer):
    parsed = parse_response(text, mode=mode)
    assert parsed.error_codes == codes
    assert parsed.reasoning == reasoning
    assert parsed.answer == answer
    assert parsed.ok == (not codes)
    for error in parsed.errors:
        assert error.split(":", 1)[0] in PARSE_ERRORS


def test_format_response():
    assert format_response(" 4 ", " 2+2=4 ", mode="on") == "<think>\n2+2=4\n</think>\n\n4"
    assert format_response("4", "", mode="on") == "<think>\n</think>\n\n4"
    assert format_response("4", mode="off") == "4"
    with pytest.raises(ValueError, match="'off'"):
        format_response("4", "r", mode="off")
    with pytest.raises(ValueError, match="think tags"):
        format_response("<think>4", mode="on")


@pytest.mark.parametrize("template", ["llama-nemotron-super", "llama-nemotron-nano"])
@pytest.mark.parametrize(
    ("mode", "reasoning", "answer"),
    [("on", "Step 1: add.\nStep 2: done.", "The answer is 7."), ("on", "", "7"), ("off", None, "The answer is 7.")],
)
def test_round_trip_render_then_parse(template, mode, reasoning, answer):
    response = format_response(answer, reasoning, mode=mode)
    prompt = render_chat(
        set_reasoning([{"role": "user", "content": "3+4?"}], mode), template=template, add_generation_prompt=True
    )
    # A full SFT sequence: prompt, then the response that keeps its reasoning, then <|eot_id|>.
    sequence = prompt + response + EOT_TOKEN
    generated = sequence[len(prompt) : -len(EOT_TOKEN)]
    parsed = parse_response(generated, mode=mode)
    assert parsed.ok, parsed.errors
    assert parsed.answer == answer
    assert parsed.reasoning == (reasoning if mode == "on" else None)
    # The history rendering of the same reply keeps exactly the parsed answer.
    history = render_chat(
        [{"role": "user", "content": "3+4?"}, {"role": "assistant", "content": response}], template=template
    )
    assert history.endswith(f"<|start_header_id|>assistant<|end_header_id|>\n\n{parsed.answer}<|eot_id|>")


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(reasoning=_TEXT, answer=_TEXT.filter(lambda s: s.strip()), mode=st.sampled_from(["on", "off"]))
def test_format_then_parse_round_trip_property(reasoning, answer, mode):
    response = format_response(answer, reasoning if mode == "on" else None, mode=mode)
    parsed = parse_response(response, mode=mode)
    assert parsed.ok, parsed.errors
    assert parsed.answer == answer.strip()
    assert parsed.reasoning == (reasoning.strip() if mode == "on" else None)
