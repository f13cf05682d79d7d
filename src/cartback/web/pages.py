"""The few pages a shopper sees: unsubscribe, and a plain not-found for dead links."""

from __future__ import annotations

import base64
import html

from fastapi.responses import HTMLResponse

# Tracking responses are per shopper and must never be cached or leak the URL onwards.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
    "button{font:inherit;padding:.6rem 1.2rem;border-radius:6px;border:1px solid #333;"
    "background:#222;color:#fff;cursor:pointer}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=PRIVATE)


def not_found() -> HTMLResponse:
    return _page("Link not found", "<h1>This link is not valid</h1>", status=404)


def unsubscribe_form(token: str) -> HTMLResponse:
    # GET only shows the button: mail scanners follow links, and they must not unsubscribe.
    action = html.escape(f"/u/{token}", quote=True)
    return _page(
        "Unsubscribe",
        "<h1>Unsubscribe from these emails?</h1>"
        f'<form method="post" action="{action}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


def unsubscribed() -> HTMLResponse:
    return _page(
        "Unsubscribed",
        "<h1>You are unsubscribed</h1><p>You will get no more marketing emails from us.</p>",
    )
