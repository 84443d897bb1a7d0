"""Paged listings in the CLI: one page, or with `--all` every page after it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def read_pages(
    fetch: Callable[[str], Awaitable[tuple[Iterable[T], str]]], page_token: str, every: bool
) -> tuple[list[T], str]:
    """The entries from `page_token` on (one page, or every page when `every`) and the token
    that continues after them ("" when nothing is left)."""
    entries: list[T] = []
    while True:
        page, page_token = await fetch(page_token)
        entries += page
        if not (every and page_token):
            return entries, page_token
