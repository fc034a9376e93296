"""The chat page: one static file at ``GET /`` (app/static/chat.html), no build step.

It talks to the chat routes like any client (a key field for when auth is on) and rejoins
a dropped reply through ``GET .../stream``. The page itself holds no secret, so it is
served without auth; ``AGENTHOST_CHAT_PAGE=false`` turns it off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

PAGE = Path(__file__).resolve().parents[2] / "static" / "chat.html"
# Inline script and style only, talking to this origin only.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def page_router() -> APIRouter:
    """The page's route, the file read once (a few KB held by the app)."""
    body = PAGE.read_bytes()
    router = APIRouter(tags=["page"])

    @router.get("/", response_class=Response, responses={200: {
        "description": "the chat page", "content": {"text/html": {"schema": {"type": "string"}}}}})
    async def chat_page() -> Response:
        """A browser chat page: pick a tenant and thread, send, watch the reply stream."""
        return Response(body, media_type="text/html; charset=utf-8", headers=HEADERS)

    return router
