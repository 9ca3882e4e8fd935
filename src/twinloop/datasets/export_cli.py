"""``twinloop data export``: being written in this session (not finished)."""

from __future__ import annotations

from typing import Any


def add_export_parser(sub: Any) -> None:
    """Register ``twinloop data export`` (nothing yet)."""
