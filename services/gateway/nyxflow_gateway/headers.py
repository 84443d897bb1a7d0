"""Security headers on every answer: nothing of the gateway may be framed (clickjacking), a
browser must not guess a type other than the one sent, and no URL (a run id) leaks in
`Referer` to another site."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FRAMING = "frame-ancestors 'none'"  # a <meta> policy cannot say this: only a header can
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", FRAMING.encode()),
]
_META_POLICY = re.compile(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"')


def page_policy(page: str) -> str:
    """The page's own policy (its <meta>, the one place it is written) with the framing rule:
    a header policy and a <meta> one are both enforced, so the header must allow what the
    page needs."""
    found = _META_POLICY.search(page)
    if found is None:
        raise ValueError("the page states no Content-Security-Policy")
    return f"{found.group(1)}; {FRAMING}"


class SecurityHeaders:
    """Adds each header an answer does not set itself (the page sets its own policy). The
    event stream's start goes through `send` too; only its frames go to the transport."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
