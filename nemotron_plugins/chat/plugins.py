"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations


def register() -> None:
    """Register this area's builtin plugins: the shipped chat templates."""
    from nemotron_plugins.registry import CHAT_TEMPLATES

    CHAT_TEMPLATES.register("llama-nemotron-super", "nemotron_plugins.chat.catalog:LLAMA_NEMOTRON_SUPER")
    CHAT_TEMPLATES.register("llama-nemotron-nano", "nemotron_plugins.chat.catalog:LLAMA_NEMOTRON_NANO")
