"""Shared fixtures for the data tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()
