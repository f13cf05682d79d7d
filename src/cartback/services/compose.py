"""Compose: render a due step into an outbox row, or say why it cannot be sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cartback.core.flows import Step
from cartback.core.model import Cart, Channel, Contact, Enrollment, Store
from cartback.core.render import (
    Discount,
    RenderError,
    TemplateError,
    build_context,
    render_email,
    render_sms,
)


class ComposeError(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def compose(
    store: Store,
    cart: Cart,
    contact: Contact,
    enrollment: Enrollment,
    step: Step,
    now: datetime,
    base_url: str,
) -> dict[str, Any]:
    locale = content_locale(step, contact.locale, store.default_locale)
    content = step.content_for(enrollment.variant, locale)
    discount = _offer(step, cart)
    link = cart.restore_url or base_url or ""
    try:
        context = build_context(
            store, cart, contact, link=link, locale=locale, discount=discount, unsubscribe_url=None
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
            to, subject, body, html = contact.email, email.subject, email.text, email.html
            encoding, segments = None, None
    except (RenderError, TemplateError) as error:
        raise ComposeError("template", f"template error: {error}") from error
    return {
        "store_id": store.id,
        "enrollment_id": enrollment.id,
        "contact_id": contact.id,
        "step_id": step.id,
        "channel": str(step.channel),
        "to_address": to,
        "subject": subject,
        "body": body,
        "html": html,
        "encoding": encoding,
        "segments": segments,
        "status": "pending",
        "attempts": 0,
        "available_at": now,
        "created_at": now,
        "updated_at": now,
    }


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
