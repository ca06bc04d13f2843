"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations


def register() -> None:
    """Register this area's builtin plugins."""
