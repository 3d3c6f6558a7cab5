"""argparse value types shared by the sub-commands: each error names what is allowed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ehc.wire.settings import parse_duration


def duration(text: str) -> float:
    """A Go-style duration greater than zero (``500ms``, ``1s``)."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number (ASCII digits) from ``minimum`` to ``maximum``."""
    allowed = f"a whole number >= {minimum}" + ("" if maximum is None else f" and <= {maximum}")

    def parse(text: str) -> int:
        t = text.strip()
        if (
            not (t.isascii() and t.isdigit())
            or int(t) < minimum
            or (maximum is not None and int(t) > maximum)
        ):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return int(t)

    return parse


positive = whole(1)
