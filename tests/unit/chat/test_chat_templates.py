"""Every rendering rule of llama-nemotron-super and llama-nemotron-nano, and parity with HF apply_chat_template."""

from __future__ import annotations

import json

import pytest

from nemotron_plugins.chat.catalog import ChatTemplate, get_chat_template, get_template
from nemotron_plugins.chat.render import ChatTemplateError, render_chat
from nemotron_plugins.registry import CHAT_TEMPLATES

BOS = "<|begin_of_text|>"
TEMPLATES = ["llama-nemotron-super", "llama-nemotron-nano"]


def turn(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


GEN = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_templates_registered_and_shipped_as_package_data():
    assert set(TEMPLATES) <= set(CHAT_TEMPLATES.names())
    for name in TEMPLATES:
        template = get_template(name)
        assert isinstance(template, ChatTemplate)
        assert template.resource.endswith(".jinja")
        assert "bos_token" in get_chat_template(name)


@pytest.mark.parametrize("template", TEMPLATES)
def test_exact_render_of_a_full_conversation(template):
    messages = [
        {"role": "system", "content": "detailed thinking on"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    expected = (
        BOS
        + turn("system", "detailed thinking on")
        + turn("user", "What is 2+2?")
        + turn("assistant", "4")
        + turn("user", "And 3+3?")
        + GEN
    )
    assert render_chat(messages, template=template, add_generation_prompt=True) == expected


@pytest.mark.parametrize("template", TEMPLATES)
def test_starts_with_the_given_bos_token(template):
    text = render_chat([{"role": "user", "content": "x"}], template=template, bos_token="<s>")
    assert text.startswith("<s><|start_header_id|>system")
    assert text.count("<s>") == 1
    assert render_chat([{"role": "user", "content": "x"}], template=template, bos_token="").startswith(
        "<|start_header_id|>system"
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_system_turn_always_rendered_empty_without_system_message(template):
    text = render_chat([{"role": "user", "content": "hi"}], template=template)
    assert text == BOS + turn("system", "") + turn("user", "hi")
    assert render_chat([], template=template) == BOS + turn("system", "")


@pytest.mark.parametrize("template", TEMPLATES)
def test_system_content_trimmed(template):
    text = render_chat([{"role": "system", "content": "  \n detailed thinking off \n"}], template=template)
    assert text == BOS + turn("system", "detailed thinking off")


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_content_trimmed(template):
    messages = [{"role": "user", "content": "\n  q  \t"}, {"role": "assistant", "content": "  a \n\n"}]
    assert render_chat(messages, template=template) == BOS + turn("system", "") + turn("user", "q") + turn(
        "assistant", "a"
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_assistant_history_keeps_only_text_after_last_think_close(template):
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<think>a</think>mid<think>b</think>\n  final  "},
    ]
    assert render_chat(messages, template=template).endswith(turn("assistant", "final"))
    # Without </think> nothing is stripped (an unclosed <think> stays).
    messages[1]["content"] = "<think>unfinished"
    assert render_chat(messages, template=template).endswith(turn("assistant", "<think>unfinished"))


@pytest.mark.parametrize("template", TEMPLATES)
def test_reasoning_not_stripped_from_user_or_system(template):
    messages = [{"role": "system", "content": "s</think>t"}, {"role": "user", "content": "<think>u</think>v"}]
    text = render_chat(messages, template=template)
    assert turn("system", "s</think>t") in text
    assert turn("user", "<think>u</think>v") in text


@pytest.mark.parametrize("template", TEMPLATES)
def test_generation_prompt_only_when_asked(template):
    messages = [{"role": "user", "content": "q"}]
    assert not render_chat(messages, template=template).endswith(GEN)
    assert render_chat(messages, template=template, add_generation_prompt=True).endswith(turn("user", "q") + GEN)


@pytest.mark.parametrize("template", TEMPLATES)
def test_later_system_messages_render_as_system_turns(template):
    messages = [{"role": "user", "content": "q"}, {"role": "system", "content": " note "}]
    assert render_chat(messages, template=template) == BOS + turn("system", "") + turn("user", "q") + turn(
        "system", "note"
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_bad_roles_and_content_rejected_with_index(template):
    with pytest.raises(ChatTemplateError, match=r"messages\[1\]\.role is 'robot'"):
        render_chat([{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}], template=template)
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]\.content must be a string"):
        render_chat([{"role": "user", "content": 3}], template=template)
    with pytest.raises(ChatTemplateError, match="must be a list"):
        render_chat("hello", template=template)  # type: ignore[arg-type]


def test_super_rejects_tools_and_tool_role():
    with pytest.raises(ChatTemplateError, match="does not render tools"):
        render_chat([{"role": "user", "content": "q"}], tools=[{"name": "f"}])
    with pytest.raises(ChatTemplateError, match="valid roles"):
        render_chat([{"role": "tool", "content": "1"}])
    with pytest.raises(ChatTemplateError, match="tool_calls"):
        render_chat([{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]}])


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city — ünïcode kept",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_nano_tools_block_appended_to_system_text():
    text = render_chat(
        [{"role": "system", "content": "detailed thinking on "}, {"role": "user", "content": "q"}],
        template="llama-nemotron-nano",
        tools=TOOLS,
    )
    block = f"<AVAILABLE_TOOLS>{json.dumps(TOOLS, ensure_ascii=False)}</AVAILABLE_TOOLS>"
    assert text == BOS + turn("system", "detailed thinking on\n\n" + block) + turn("user", "q")


def test_nano_tools_block_alone_without_system_text():
    text = render_chat([{"role": "user", "content": "q"}], template="llama-nemotron-nano", tools=TOOLS)
    block = f"<AVAILABLE_TOOLS>{json.dumps(TOOLS, ensure_ascii=False)}</AVAILABLE_TOOLS>"
    assert text == BOS + turn("system", block) + turn("user", "q")
    # Without tools nano renders exactly like super.
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"}]
    assert render_chat(messages, template="llama-nemotron-nano") == render_chat(messages)


def test_nano_tool_calls_both_shapes_and_string_arguments():
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET", "n": 2}}},
        {"name": "raw", "arguments": '{"already": "json"}'},
    ]
    text = render_chat(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": calls}],
        template="llama-nemotron-nano",
    )
    expected_list = json.dumps(
        [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {"tz": "CET", "n": 2}},
            {"name": "raw", "arguments": {"already": "json"}},
        ]
    )
    assert text.endswith(turn("assistant", f"<TOOLCALL>{expected_list}</TOOLCALL>"))


def test_nano_tool_call_after_content_and_reasoning_stripped():
    message = {
        "role": "assistant",
        "content": "<think>plan</think>\n Let me check. ",
        "tool_calls": [{"name": "f", "arguments": {}}],
    }
    text = render_chat([{"role": "user", "content": "q"}, message], template="llama-nemotron-nano")
    assert text.endswith(turn("assistant", 'Let me check.\n<TOOLCALL>[{"name": "f", "arguments": {}}]</TOOLCALL>'))


def test_nano_consecutive_tool_results_grouped_into_one_user_turn():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": {}}]},
        {"role": "tool", "content": ' {"temp": 20} '},
        {"role": "tool", "content": {"time": "noon"}},
        {"role": "assistant", "content": "done"},
        {"role": "tool", "content": "plain"},
    ]
    text = render_chat(messages, template="llama-nemotron-nano", add_generation_prompt=True)
    assert (
        turn("user", '<TOOL_RESPONSE>[{"temp": 20}, {"time": "noon"}]</TOOL_RESPONSE>') + turn("assistant", "done")
        in text
    )
    assert text.endswith(turn("user", "<TOOL_RESPONSE>[plain]</TOOL_RESPONSE>") + GEN)
    assert "<|start_header_id|>tool" not in text


def test_nano_rejects_bad_tool_call():
    with pytest.raises(ChatTemplateError, match=r"tool_calls\[0\]"):
        render_chat(
            [{"role": "assistant", "content": None, "tool_calls": [{"arguments": {}}]}],
            template="llama-nemotron-nano",
        )
    with pytest.raises(ChatTemplateError, match="None is allowed only"):
        render_chat([{"role": "assistant", "content": None}], template="llama-nemotron-nano")


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": " detailed thinking on "},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nr\n</think>\n\na1"},
        {"role": "user", "content": " q2 "},
    ],
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_same_text_as_hf_apply_chat_template(template, messages, generation_prompt):
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(chat_template=template)
    hf = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert hf == render_chat(messages, template=template, add_generation_prompt=generation_prompt)


def test_nano_tools_same_text_as_hf_apply_chat_template():
    from transformers import PreTrainedTokenizerFast

    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(chat_template=None)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    tokenizer.chat_template = get_chat_template("llama-nemotron-nano")
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "content": '{"temp": -3}'},
    ]
    hf = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert hf == render_chat(messages, template="llama-nemotron-nano", tools=TOOLS, add_generation_prompt=True)
