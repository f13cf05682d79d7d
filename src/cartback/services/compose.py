"""Compose: render a due step into an outbox row, or say why it cannot be sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from cartback.core.flows import Step
from cartback.core.links import LinkRejected, checked_destination, with_utm
from cartback.core.locales import pick_locale
from cartback.core.model import Cart, Channel, Contact, Enrollment, Store
from cartback.core.money import CURRENCY_RULE, Rates
from cartback.core.render import (
    Discount,
    RenderError,
    TemplateError,
    build_context,
    render_email,
    render_sms,
)
from cartback.core.storepolicy import store_rates
from cartback.services.tracking import mint

# The pool name under which issued per-cart codes are stored; flows cannot name it.
UNIQUE_POOL = "@unique"
PENDING_RULE = "discount.pending"


class ComposeError(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


# Gives a cart a code from a named pool (the same one on every step), or None when it is empty.
CodeSource = Callable[[str, Cart], str | None]


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
    codes: CodeSource | None = None,
) -> Composed:
    """Render the step for this cart, with its tracked link (and for email the open pixel and
    one-click unsubscribe), or raise ComposeError naming the rule that stops it. `codes` hands
    out pooled discount codes, one per cart."""
    codes = codes or _no_pools
    if step.channel is Channel.EMAIL and not store.postal_address:
        raise ComposeError(
            "can_spam.postal_address",
            "marketing email needs the store's postal address in every message; set it first",
        )
    locale = content_locale(step, contact, store)
    content = step.content_for(enrollment.variant, locale)
    discount = _offer(step, cart, codes, store_rates(store.policy))
    minted = mint(
        base_url=base_url,
        store_id=store.id,
        enrollment_id=enrollment.id,
        step_id=step.id,
        cart_id=cart.id,
        contact_id=contact.id,
        channel=step.channel,
        destination=_destination(store, cart, enrollment, step, discount),
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
            discount=discount,
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


def _destination(
    store: Store, cart: Cart, enrollment: Enrollment, step: Step, discount: Discount | None
) -> str:
    """Where the tracked link leads: the cart's restore URL, on one of the store's own domains,
    tagged for analytics. Anything else is refused: no open redirects."""
    if not store.domains:
        raise ComposeError("link", "the store has no domains, so no tracked link can be made")
    target = cart.restore_url or f"https://{store.domains[0]}/cart"
    try:
        checked = checked_destination(target, store.domains)
    except LinkRejected as error:
        raise ComposeError("link", f"restore URL refused: {error}") from error
    tagged = with_utm(
        checked, medium=str(step.channel), campaign=enrollment.flow_name, content=step.id
    )
    return discount_link(tagged, discount.code, store.platform) if discount else tagged


def _with_pixel(document: str | None, open_url: str | None) -> str | None:
    if document is None or open_url is None:
        return document
    pixel = f'<img src="{open_url}" width="1" height="1" alt="" style="display:none">'
    end = document.lower().rfind("</body>")
    return f"{document[:end]}{pixel}{document[end:]}" if end != -1 else document + pixel


def content_locale(step: Step, contact: Contact, store: Store) -> str:
    """The locale of the shopper's message, among those the step has text for: the checkout's
    locale, then the shipping country's language, then the store's default. The words, the
    opt-out line and the money format then all speak one language."""
    return pick_locale(
        step.offered_locales(store.default_locale),
        checkout_locale=contact.locale,
        country=contact.country,
        store_default=store.default_locale,
    )


def _offer(step: Step, cart: Cart, codes: CodeSource, rates: Rates | None) -> Discount | None:
    """The step's discount as the message shows it, when this cart qualifies for it."""
    spec = step.discount
    if spec is None or not spec.offered_for(cart, rates):
        return None
    amount = spec.amount_for(cart.currency, rates)
    if spec.amount is not None and amount is None:
        # The engine skips such a step first (flow.currency); never show an amount as a bare
        # number in another currency.
        raise ComposeError(
            CURRENCY_RULE,
            f"the discount amount is stated in {spec.amount.describe()}, not {cart.currency}",
        )
    if spec.code is not None:
        code = spec.code
    elif spec.pool is not None:
        found = codes(spec.pool, cart)
        if found is None:
            raise ComposeError(
                "discount.pool_empty",
                f"discount pool {spec.pool!r} has no unused codes left; load more with "
                "`cartback discounts load`",
            )
        code = found
    else:
        # Issued ahead by the worker (services/unique_codes.py); here it is only read.
        issued = codes(UNIQUE_POOL, cart)
        if issued is None:
            raise ComposeError(
                PENDING_RULE, f"step {step.id} asks for a unique code; none is issued yet"
            )
        code = issued
    return Discount(code=code, percent=spec.percent, amount=amount)


def _no_pools(pool: str, _cart: Cart) -> str | None:
    return None


def discount_link(url: str, code: str, platform: str) -> str:
    """A restore link that also applies the code, where the shop platform has a way to."""
    if platform != "shopify":
        return url
    # Shopify applies /discount/CODE to the session, then follows `redirect` on the same shop.
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    target = f"/discount/{quote(code, safe='')}?redirect={quote(path or '/', safe='')}"
    return urlunsplit((parts.scheme, parts.netloc, "", "", "")) + target
