"""Compose: render a due step into an outbox row, or say why it cannot be sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cartback.core.flows import Step
from cartback.core.links import LinkRejected, checked_destination, with_utm
from cartback.core.model import Cart, Channel, Contact, Enrollment, Store
from cartback.core.render import (
    Discount,
    RenderError,
    TemplateError,
    build_context,
    render_email,
    render_sms,
)
from cartback.services.tracking import mint


class ComposeError(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Composed:
    outbox: dict[str, Any]
    links: tuple[dict[str, Any], ...]


def compose(
    store: Store,
    cart: Cart,
    contact: Contact,
    enrollment: Enrollment,
    step: Step,
    now: datetime,
    base_url: str,
) -> Composed:
    """Render the step for this cart, with its tracked link (and for email the open pixel and
    one-click unsubscribe), or raise ComposeError naming the rule that stops it."""
    if step.channel is Channel.EMAIL and not store.postal_address:
        raise ComposeError(
            "can_spam.postal_address",
            "marketing email needs the store's postal address in every message; set it first",
        )
    locale = content_locale(step, contact.locale, store.default_locale)
    content = step.content_for(enrollment.variant, locale)
    minted = mint(
        base_url=base_url,
        store_id=store.id,
        enrollment_id=enrollment.id,
        step_id=step.id,
        cart_id=cart.id,
        contact_id=contact.id,
        channel=step.channel,
        destination=_destination(store, cart, enrollment, step),
        now=now,
    )
    headers: dict[str, str] | None = None
    try:
        context = build_context(
            store,
            cart,
            contact,
            link=minted.click_url,
            locale=locale,
            discount=_offer(step, cart),
            unsubscribe_url=minted.unsubscribe_url,
        )
        if step.channel is Channel.SMS:
            assert contact.phone is not None
            sms = render_sms(content.body, context, max_segments=step.max_segments)
            if not sms.fits:
                raise ComposeError("segments", sms.reason or "the message does not fit")
            to, subject, body, html = contact.phone, None, sms.text, None
            encoding, segments = sms.info.encoding, sms.info.segments
        else:
            assert contact.email is not None
            email = render_email(content.subject or "", content.body, content.html, context)
            to, subject, body = contact.email, email.subject, email.text
            html = _with_pixel(email.html, minted.open_url)
            encoding, segments = None, None
            # RFC 8058 one-click unsubscribe; the POST needs no login and no cookie.
            headers = {
                "List-Unsubscribe": f"<{minted.unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
    except (RenderError, TemplateError) as error:
        raise ComposeError("template", f"template error: {error}") from error
    outbox = {
        "store_id": store.id,
        "enrollment_id": enrollment.id,
        "contact_id": contact.id,
        "step_id": step.id,
        "channel": str(step.channel),
        "to_address": to,
        "subject": subject,
        "body": body,
        "html": html,
        "headers": headers,
        "encoding": encoding,
        "segments": segments,
        "status": "pending",
        "attempts": 0,
        "available_at": now,
        "created_at": now,
        "updated_at": now,
    }
    return Composed(outbox, minted.rows)


def _destination(store: Store, cart: Cart, enrollment: Enrollment, step: Step) -> str:
    """Where the tracked link leads: the cart's restore URL, on one of the store's own domains,
    tagged for analytics. Anything else is refused: no open redirects."""
    if not store.domains:
        raise ComposeError("link", "the store has no domains, so no tracked link can be made")
    target = cart.restore_url or f"https://{store.domains[0]}/cart"
    try:
        checked = checked_destination(target, store.domains)
    except LinkRejected as error:
        raise ComposeError("link", f"restore URL refused: {error}") from error
    return with_utm(
        checked, medium=str(step.channel), campaign=enrollment.flow_name, content=step.id
    )


def _with_pixel(document: str | None, open_url: str | None) -> str | None:
    if document is None or open_url is None:
        return document
    pixel = f'<img src="{open_url}" width="1" height="1" alt="" style="display:none">'
    end = document.lower().rfind("</body>")
    return f"{document[:end]}{pixel}{document[end:]}" if end != -1 else document + pixel


def content_locale(step: Step, wanted: str | None, fallback: str) -> str:
    """The shopper's locale when the step has text for it, else the store's: the words, the
    opt-out line and the money format then all speak one language."""
    if wanted:
        language = wanted.replace("_", "-").split("-")[0].lower()
        keys = {key.lower() for key in step.locales}
        variants = (o.locales for o in step.variant_overrides.values())
        keys |= {key.lower() for table in variants for key in table}
        if wanted.lower() in keys or language in {key.split("-")[0] for key in keys}:
            return wanted
    return fallback


def _offer(step: Step, cart: Cart) -> Discount | None:
    """The step's discount as the message shows it, when this cart qualifies for it."""
    spec = step.discount
    if spec is None or not spec.applies_to(cart.value):
        return None
    if spec.code is None:
        raise ComposeError(
            "discount", f"step {step.id} asks for pooled or unique codes, which no source provides"
        )
    return Discount(code=spec.code, percent=spec.percent, amount=spec.amount)
