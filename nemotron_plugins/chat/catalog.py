"""The chat templates this package ships, as objects the ``CHAT_TEMPLATES`` registry hands out.

Each builtin template is a ``.jinja`` file in ``nemotron_plugins/chat/templates/`` (package data), usable as a
Hugging Face ``chat_template``::

    from nemotron_plugins.chat.catalog import get_chat_template
    tokenizer.chat_template = get_chat_template("llama-nemotron-super")

Registered names (see ``nemotron_plugins/chat/plugins.py``):

- ``llama-nemotron-super``: Llama-3.3-Nemotron-Super-49B-v1 semantics (system/user/assistant).
- ``llama-nemotron-nano``: the same plus tools, tool calls and tool results (Llama-3.1-Nemotron-Nano-8B-v1).

Third-party packages register their own :class:`ChatTemplate` objects under new names.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatTemplate:
    """A Jinja chat template shipped as a package resource."""

    name: str
    """The name the template is registered under."""
    package: str
    """Python package holding the template file."""
    resource: str
    """Path of the ``.jinja`` file inside ``package``."""
    roles: tuple[str, ...]
    """Message roles the template accepts."""
    supports_tools: bool = False
    """Whether the template renders ``tools`` and assistant ``tool_calls``."""
    description: str = ""
    """One line describing the template."""

    def source(self) -> str:
        """Return the Jinja source text of the template."""
        return resources.files(self.package).joinpath(self.resource).read_text(encoding="utf-8")


_TEMPLATES_PACKAGE = "nemotron_plugins.chat"

LLAMA_NEMOTRON_SUPER = ChatTemplate(
    name="llama-nemotron-super",
    package=_TEMPLATES_PACKAGE,
    resource="templates/llama-nemotron-super.jinja",
    roles=("system", "user", "assistant"),
    description="Llama-3.3-Nemotron-Super-49B-v1: Llama-3 headers, reasoning stripped from assistant history",
)

LLAMA_NEMOTRON_NANO = ChatTemplate(
    name="llama-nemotron-nano",
    package=_TEMPLATES_PACKAGE,
    resource="templates/llama-nemotron-nano.jinja",
    roles=("system", "user", "assistant", "tool"),
    supports_tools=True,
    description="Llama-3.1-Nemotron-Nano-8B-v1: the super template plus <AVAILABLE_TOOLS>/<TOOLCALL>/<TOOL_RESPONSE>",
)


def get_template(name: str) -> ChatTemplate:
    """Return the registered :class:`ChatTemplate` called ``name``.

    Raises:
        nemotron_plugins.registry.UnknownPluginError: If no template has that name (the message lists them).
        TypeError: If the registered object is not a :class:`ChatTemplate`.
    """
    from nemotron_plugins.registry import CHAT_TEMPLATES

    template = CHAT_TEMPLATES.get(name)
    if not isinstance(template, ChatTemplate):
        raise TypeError(f"chat template {name!r} is registered as {type(template).__name__}, expected ChatTemplate")
    return template


def get_chat_template(name: str) -> str:
    """Return the Jinja source of the registered template ``name`` (for ``tokenizer.chat_template``)."""
    return get_template(name).source()
