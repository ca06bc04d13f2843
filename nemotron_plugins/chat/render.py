"""Render conversations with the registered chat templates, exactly as Hugging Face ``apply_chat_template`` does.

Public API::

    render_chat(messages, *, template="llama-nemotron-super", add_generation_prompt=False,
                bos_token="<|begin_of_text|>", tools=None) -> str
    validate_messages(messages, *, roles=..., allow_tool_calls=False) -> list[dict]

The Jinja environment mirrors the one transformers uses for chat templates (sandboxed, ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that is ``json.dumps(ensure_ascii=False)``
and a ``raise_exception`` global), so a template renders byte for byte the same here and as a tokenizer's
``chat_template``. Messages are checked in Python first, so bad input fails with an error naming the message index
and field instead of a Jinja traceback.

Rendering rules of the builtin templates (``llama-nemotron-super``; ``llama-nemotron-nano`` adds tools):

1. the text starts with ``bos_token``;
2. a system turn is always rendered: the first message's content when it is a system message, else empty;
3. every turn is ``<|start_header_id|>ROLE<|end_header_id|>\\n\\n`` + trimmed content + ``<|eot_id|>``;
4. an assistant content containing ``</think>`` keeps only the text after its last ``</think>`` (then trimmed),
   so the history never carries reasoning;
5. ``add_generation_prompt`` appends ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.

An SFT target that keeps its reasoning is appended after the generation prompt, followed by ``<|eot_id|>``
(see :func:`nemotron_plugins.data.sft.build_sft_examples`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_TEMPLATE = "llama-nemotron-super"
DEFAULT_BOS_TOKEN = "<|begin_of_text|>"
EOT_TOKEN = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
ASSISTANT_HEADER = f"{START_HEADER}assistant{END_HEADER}\n\n"


class ChatTemplateError(ValueError):
    """A conversation cannot be rendered with a template (bad role, bad content, template error)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # The same serialisation transformers uses for chat templates, so renders match byte for byte.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


@functools.lru_cache(maxsize=32)
def _compiled(source: str) -> Any:
    return _environment().from_string(source)


def validate_messages(
    messages: Any,
    *,
    roles: Sequence[str] = ("system", "user", "assistant"),
    allow_tool_calls: bool = False,
) -> list[dict[str, Any]]:
    """Check a conversation and return it as a list of plain dicts.

    Args:
        messages: A list of ``{"role": ..., "content": ...}`` mappings.
        roles: The roles allowed.
        allow_tool_calls: Whether assistant messages may carry ``tool_calls`` (then ``content`` may be ``None``).

    Returns:
        The messages as a new list of dicts (the input is not modified).

    Raises:
        ChatTemplateError: Naming the message index and field that is wrong and what would be valid.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be an object with role and content, got {message!r}")
        role = message.get("role")
        if role not in roles:
            raise ChatTemplateError(f"messages[{i}].role is {role!r}; valid roles: {', '.join(roles)}")
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if tool_calls:
            if not allow_tool_calls or role != "assistant":
                raise ChatTemplateError(
                    f"messages[{i}] has tool_calls; only assistant messages with a tools-capable template "
                    "(llama-nemotron-nano) may carry them"
                )
            if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, str):
                raise ChatTemplateError(f"messages[{i}].tool_calls must be a list of {{name, arguments}} objects")
            for j, call in enumerate(tool_calls):
                fn = call.get("function", call) if isinstance(call, Mapping) else None
                if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                    raise ChatTemplateError(f"messages[{i}].tool_calls[{j}] must be an object with a string name")
        if not isinstance(content, str):
            allowed_none = content is None and tool_calls
            allowed_json = role == "tool" and content is not None
            if not (allowed_none or allowed_json):
                raise ChatTemplateError(
                    f"messages[{i}].content must be a string, got {type(content).__name__}"
                    + (" (None is allowed only for assistant messages with tool_calls)" if content is None else "")
                )
        out.append(dict(message))
    return out


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    template: str = DEFAULT_TEMPLATE,
    add_generation_prompt: bool = False,
    bos_token: str = DEFAULT_BOS_TOKEN,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render a conversation to the exact text a model sees.

    Args:
        messages: ``{"role", "content"}`` messages (``tool_calls`` / role ``tool`` only with a tools template).
        template: Registered chat template name (``llama-nemotron-super`` or ``llama-nemotron-nano``).
        add_generation_prompt: Append the assistant header so the model continues with its answer.
        bos_token: The text of the beginning-of-sequence token (use the tokenizer's ``bos_token``).
        tools: JSON-schema tool descriptions, rendered in the system turn (tools templates only).

    Returns:
        The rendered text.

    Raises:
        ChatTemplateError: If a message has a bad role or content, or tools are given to a template without tools.
        nemotron_plugins.registry.UnknownPluginError: If ``template`` is not registered.

    Example:
        >>> render_chat([{"role": "user", "content": " hi "}], add_generation_prompt=True)
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n<|eot_id|><|start_header_id|>user<|end_header_id|>\\n\\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n'
    """
    from nemotron_plugins.chat.catalog import get_template

    spec = get_template(template)
    checked = validate_messages(messages, roles=spec.roles, allow_tool_calls=spec.supports_tools)
    if tools is not None:
        if not spec.supports_tools:
            raise ChatTemplateError(f"template {template!r} does not render tools; use 'llama-nemotron-nano'")
        if isinstance(tools, str) or not isinstance(tools, Sequence):
            raise ChatTemplateError("tools must be a list of JSON-schema tool objects")
    return _compiled(spec.source()).render(
        messages=checked,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        tools=list(tools) if tools else None,
    )
