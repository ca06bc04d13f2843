"""Helpers shared by the CLI modules."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    print(f"nemotron-plugins: error: {message}", file=sys.stderr)
    raise SystemExit(code)
