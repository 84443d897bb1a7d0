"""Keyset paging: where a page ended, sent to the caller as an opaque token."""

from __future__ import annotations

import base64
import json
import math
from typing import NamedTuple

from nyxflow.errors import InvalidArgument


class PageEnd(NamedTuple):
    """A page's last row's (created_at, id), the listing's order (newest first). The next page
    starts after it: ties on created_at are neither skipped nor repeated."""

    created_at: float
    id: str

    def token(self) -> str:
        raw = json.dumps([self.created_at, self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def of(cls, token: str, field: str) -> PageEnd:
        """The page end a token names; anything but a token a page ended with is refused."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            created_at, row_id = json.loads(raw)
            number = isinstance(created_at, int | float) and not isinstance(created_at, bool)
            # An int past a float's range overflows isfinite; a NUL PostgreSQL cannot compare.
            valid = (
                number
                and math.isfinite(created_at)
                and isinstance(row_id, str)
                and "\x00" not in row_id
            )
        except (ValueError, TypeError, RecursionError, OverflowError):
            valid = False
        if not valid:
            raise InvalidArgument("is not a token an earlier page ended with", field=field)
        return cls(float(created_at), row_id)
