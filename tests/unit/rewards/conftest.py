"""Shared test fixtures of the reward tests."""

from __future__ import annotations

import pytest

LANGDETECT_REASON = (
    "langdetect is not installed (the 'rewards' extra): IFEval's language:response_language and English-case "
    "checks need it"
)
LANGDETECT_INSTRUCTIONS = frozenset(
    {"language:response_language", "change_case:english_lowercase", "change_case:english_capital"}
)
"""IFEval instructions whose check runs langdetect."""


def require_langdetect() -> None:
    """Skip the calling test, naming the missing package, when langdetect is not importable."""
    pytest.importorskip("langdetect", reason=LANGDETECT_REASON)


@pytest.fixture
def langdetect() -> None:
    """Tests that run langdetect skip (with the reason) where it is not installed, e.g. a GPU machine's wheels."""
    require_langdetect()
