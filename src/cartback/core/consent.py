"""The consent ledger as a fold: append-only consent events in, the current ConsentView out.

The ledger is the proof of consent, so nothing here deletes or rewrites an event. A grant that the
rules refuse stays in the ledger and in `history_rows`, marked as having had no effect.

Rules, per channel, in the order cartback received the events (`received_at`, then id). The
shop's own time (`at`) is kept as evidence but never orders the ledger: a shop clock running
ahead must not put a grant after the shopper's later opt-out.
- Opt-out: a revoke of MARKETING from any source, or any revoke from the shopper's own channels
  (KEYWORD_REPLY, UNSUBSCRIBE_LINK) or a PROVIDER opt-out report. It sets `suppressed`, clears
  marketing, cart reminders, double opt-in and the basis; transactional stays (unless the revoke
  was of TRANSACTIONAL itself). It beats every grant received before it, whatever their `at`.
  `opted_out_at` is when the first opt-out in force was received.
- Only the shopper lifts an opt-out: a MARKETING or CART_REMINDERS grant from KEYWORD_REPLY
  (START), FORM, CHECKOUT or UNSUBSCRIBE_LINK (resubscribe), received after the opt-out AND
  stamped (`at`) after the latest opt-out was received. A grant received later but stamped
  earlier is a delayed report of consent given before the shopper said stop; it is ignored.
  So is one whose shop time ingest clamped (`shop_time_clamped`): a clock that ran ahead is
  no evidence that the grant came after the opt-out.
  A grant from IMPORT, ADMIN, API or PROVIDER while suppressed is ignored: an import or a staff
  member cannot re-opt-in someone who said stop, and a provider report is second-hand.
- Cart reminders hold while marketing is granted or they were granted explicitly; an explicit
  revoke of cart reminders (outside an opt-out) stands until the shopper grants them again.
- The basis follows the latest effective grant, except that implied consent never replaces
  a non-implied one and, of two implied bases, the one lasting longer under CASL stays.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cartback.core.model import Channel, ConsentView, Purpose


class ConsentSource(StrEnum):
    CHECKOUT = "checkout"
    FORM = "form"
    KEYWORD_REPLY = "keyword_reply"
    IMPORT = "import"
    ADMIN = "admin"
    API = "api"
    UNSUBSCRIBE_LINK = "unsubscribe_link"
    # A carrier or SMS provider reporting an opt-out it handled itself.
    PROVIDER = "provider"


# A revoke from any of these is the shopper (or their carrier for them) saying stop: an opt-out.
OPT_OUT_SOURCES = frozenset(
    {ConsentSource.KEYWORD_REPLY, ConsentSource.UNSUBSCRIBE_LINK, ConsentSource.PROVIDER}
)
# Only an action the shopper performs can lift an opt-out. A provider report is second-hand: the
# shopper's own START reaches us as a KEYWORD_REPLY anyway.
SHOPPER_OPT_IN_SOURCES = frozenset(
    {
        ConsentSource.KEYWORD_REPLY,
        ConsentSource.FORM,
        ConsentSource.CHECKOUT,
        ConsentSource.UNSUBSCRIBE_LINK,
    }
)

BASES = frozenset({"express", "implied_purchase", "implied_inquiry", "soft_opt_in"})
IMPLIED_BASES = frozenset({"implied_purchase", "implied_inquiry"})
# CASL: implied consent lasts 2 years after a purchase and 6 months after an inquiry.
CASL_IMPLIED_EXPIRY: Mapping[str, timedelta] = {
    "implied_purchase": timedelta(days=730),
    "implied_inquiry": timedelta(days=180),
}


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    contact_id: int
    channel: Channel
    purpose: Purpose
    granted: bool
    source: ConsentSource
    at: datetime
    wording: str | None = None
    wording_hash: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    double_opt_in_message_id: str | None = None
    double_opt_in_at: datetime | None = None
    # "express", "implied_purchase", "implied_inquiry" or "soft_opt_in"; None when not recorded.
    basis: str | None = None
    id: int | None = None
    # When cartback recorded the event; None (events built outside the store) means `at`.
    received_at: datetime | None = None
    # True when the shop stamped the event too far ahead and ingest clamped `at` to its receipt.
    shop_time_clamped: bool = False

    def __post_init__(self) -> None:
        # Coerce plain strings (e.g. from a database row) to the enums, rejecting unknown values.
        for name, enum in (("channel", Channel), ("purpose", Purpose), ("source", ConsentSource)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                allowed = ", ".join(member.value for member in enum)
                raise ValueError(
                    f"unknown consent {name} {value!r}: use one of {allowed}"
                ) from None
        if not isinstance(self.at, datetime):
            raise ValueError(f"consent event time must be a datetime, got {self.at!r}")
        if self.received_at is not None and not isinstance(self.received_at, datetime):
            raise ValueError(f"consent receive time must be a datetime, got {self.received_at!r}")
        if not isinstance(self.granted, bool):
            raise ValueError(f"consent event 'granted' must be a bool, got {self.granted!r}")
        if self.basis is not None and self.basis not in BASES:
            allowed = ", ".join(sorted(BASES))
            raise ValueError(f"unknown consent basis {self.basis!r}: use one of {allowed}")

    @property
    def recorded_at(self) -> datetime:
        """The ledger's order: when cartback received the event."""
        return self.at if self.received_at is None else self.received_at

    @property
    def has_double_opt_in_evidence(self) -> bool:
        return self.double_opt_in_message_id is not None or self.double_opt_in_at is not None


def wording_hash(wording: str) -> str:
    """sha256 hex of the disclosure text, NFC-normalised with whitespace runs collapsed.

    Re-wrapping or re-indenting a form's text doesn't change its hash; changing a word does.
    """
    normalised = " ".join(unicodedata.normalize("NFC", wording).split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class _State:
    view: ConsentView
    # The shopper's own word on cart reminders: True granted, False revoked, None never said.
    cart_choice: bool | None = None
    # When the latest opt-out in force was received: a grant must be stamped after it to lift it.
    last_opt_out: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Applied:
    state: _State
    effective: bool
    note: str


def _ledger_order(events: Iterable[ConsentEvent]) -> list[ConsentEvent]:
    ordered = list(events)
    for event in ordered:
        if not isinstance(event, ConsentEvent):
            raise ValueError(f"expected ConsentEvent, got {type(event).__name__}")
    contacts = {event.contact_id for event in ordered}
    if len(contacts) > 1:
        raise ValueError(f"consent events of several contacts in one fold: {sorted(contacts)}")
    naive = {e.at.tzinfo is None for e in ordered} | {e.recorded_at.tzinfo is None for e in ordered}
    if len(naive) > 1:
        raise ValueError("consent events mix naive and timezone-aware times; store UTC-aware times")
    # Receive order, not the shop's time. Stable sort: events without an id keep their given
    # order among equal times.
    return sorted(ordered, key=lambda e: (e.recorded_at, e.id is None, e.id or 0))


def _with_cart_reminders(state: _State) -> _State:
    view = state.view
    allowed = (
        not view.suppressed
        and state.cart_choice is not False
        and (view.marketing or state.cart_choice is True)
    )
    if view.cart_reminders == allowed:
        return state  # unchanged: the fold runs for every step the timer decides
    return _State(replace(view, cart_reminders=allowed), state.cart_choice, state.last_opt_out)


def _opt_out(state: _State, event: ConsentEvent) -> _Applied:
    view = state.view
    already = view.suppressed
    view = replace(
        view,
        marketing=False,
        cart_reminders=False,
        double_opt_in=False,
        suppressed=True,
        basis=None,
        basis_since=None,
        # The suppression started at the first opt-out; a repeated STOP doesn't move it.
        opted_out_at=view.opted_out_at if already and view.opted_out_at else event.recorded_at,
    )
    if event.purpose is Purpose.TRANSACTIONAL:
        view = replace(view, transactional=False)
    note = "opt-out repeated: already opted out" if already else "opt-out: marketing stopped"
    state = _State(view, cart_choice=None, last_opt_out=event.recorded_at)
    return _Applied(state, effective=True, note=note)


def _keeps_current_basis(view: ConsentView, event: ConsentEvent) -> bool:
    """True when the grant would weaken the basis held: implied never replaces a non-implied
    consent, and of two implied bases the one lasting longer under the CASL periods stays."""
    holding = view.marketing or view.cart_reminders
    if not holding or event.basis not in IMPLIED_BASES:
        return False
    if view.basis not in IMPLIED_BASES or view.basis_since is None:
        return view.basis not in IMPLIED_BASES
    current_end = view.basis_since + CASL_IMPLIED_EXPIRY[view.basis]
    return current_end > event.at + CASL_IMPLIED_EXPIRY[event.basis]


def _grant(state: _State, event: ConsentEvent) -> _Applied:
    view = state.view
    if event.purpose is Purpose.TRANSACTIONAL:
        return _Applied(replace(state, view=replace(view, transactional=True)), True, "")
    if view.suppressed and event.source not in SHOPPER_OPT_IN_SOURCES:
        note = f"ignored: {_source_phrase(event.source)} cannot re-subscribe an opted-out contact"
        return _Applied(state, effective=False, note=note)
    if view.suppressed and event.shop_time_clamped:
        note = "ignored: the shop's clock ran ahead, so nothing shows it came after the opt-out"
        return _Applied(state, effective=False, note=note)
    if view.suppressed and state.last_opt_out is not None and event.at <= state.last_opt_out:
        note = "ignored: stamped before the opt-out was received; it speaks for an earlier moment"
        return _Applied(state, effective=False, note=note)
    note = f"re-subscribed by the shopper ({event.source.value})" if view.suppressed else ""
    # Every change gathered first and made in one copy of the view: the timer folds the ledger
    # for each step. _keeps_current_basis reads no field changed before it.
    changes: dict[str, Any] = {"suppressed": False, "opted_out_at": None}
    if not _keeps_current_basis(view, event):
        changes["basis"], changes["basis_since"] = event.basis, event.at
    if event.purpose is Purpose.MARKETING:
        changes["marketing"] = True
        changes["double_opt_in"] = event.has_double_opt_in_evidence
        state = _State(replace(view, **changes), state.cart_choice, last_opt_out=None)
        return _Applied(_with_cart_reminders(state), True, note)
    state = _State(replace(view, **changes), cart_choice=True)
    return _Applied(_with_cart_reminders(state), True, note)


def _revoke(state: _State, event: ConsentEvent) -> _Applied:
    if event.purpose is Purpose.MARKETING or event.source in OPT_OUT_SOURCES:
        return _opt_out(state, event)
    if event.purpose is Purpose.TRANSACTIONAL:
        view = replace(state.view, transactional=False)
        return _Applied(replace(state, view=view), True, "")
    revoked = _with_cart_reminders(replace(state, cart_choice=False))
    return _Applied(revoked, True, "cart reminders revoked; marketing unchanged")


def _apply(state: _State, event: ConsentEvent) -> _Applied:
    return _grant(state, event) if event.granted else _revoke(state, event)


def _source_phrase(source: ConsentSource) -> str:
    return {
        ConsentSource.IMPORT: "an import",
        ConsentSource.ADMIN: "an admin change",
        ConsentSource.API: "an API call",
        ConsentSource.PROVIDER: "a provider report",
    }.get(source, f"source {source.value}")


def fold(events: Iterable[ConsentEvent], channel: Channel) -> ConsentView:
    """The current consent on `channel`, from the contact's ledger (events of one contact)."""
    channel = Channel(channel)
    state = _State(ConsentView(channel=channel))
    for event in _ledger_order(events):
        if event.channel is channel:
            state = _apply(state, event).state
    return state.view


def erased_view(channel: Channel) -> ConsentView:
    """The view of an erased contact: nothing permitted, and suppressed should the number return."""
    return ConsentView(channel=Channel(channel), erased=True, suppressed=True)


def _expired(view: ConsentView, now: datetime, expiry: Mapping[str, timedelta]) -> bool:
    if view.basis not in IMPLIED_BASES:
        return False
    if view.basis_since is None:
        return True  # implied consent with no start date can't be shown to be current
    if (view.basis_since.tzinfo is None) != (now.tzinfo is None):
        raise ValueError("'now' and the consent basis time mix naive and timezone-aware times")
    return now >= view.basis_since + expiry[view.basis]


def is_permitted(
    view: ConsentView,
    purpose: Purpose,
    now: datetime,
    *,
    implied_expiry: Mapping[str, timedelta] | None = None,
) -> bool:
    """May a message of `purpose` go out on this channel at `now`? Transactional never implies
    marketing; implied consent (CASL) lapses `implied_expiry[basis]` after `basis_since`."""
    purpose = Purpose(purpose)
    if view.erased:
        return False
    if purpose is Purpose.TRANSACTIONAL:
        return view.transactional
    granted = view.marketing if purpose is Purpose.MARKETING else view.cart_reminders
    if view.suppressed or not granted:
        return False
    expiry = {**CASL_IMPLIED_EXPIRY, **(implied_expiry or {})}
    return not _expired(view, now, expiry)


def history_rows(events: Iterable[ConsentEvent]) -> list[dict[str, object]]:
    """The ledger in order, for display: each event and whether it changed the contact's consent."""
    states: dict[Channel, _State] = {}
    rows: list[dict[str, object]] = []
    for event in _ledger_order(events):
        state = states.get(event.channel, _State(ConsentView(channel=event.channel)))
        applied = _apply(state, event)
        states[event.channel] = applied.state
        digest = event.wording_hash
        note = applied.note
        if event.wording is not None:
            computed = wording_hash(event.wording)
            if digest is not None and digest != computed:
                note = "; ".join(filter(None, [note, "stored wording hash does not match wording"]))
            digest = digest or computed
        rows.append(
            {
                "id": event.id,
                # The shop's time, as evidence, and when cartback received it (the ledger's order).
                "time": event.at,
                "received_at": event.recorded_at,
                "shop_time_clamped": event.shop_time_clamped,
                "channel": event.channel.value,
                "purpose": event.purpose.value,
                "granted": event.granted,
                "source": event.source.value,
                "basis": event.basis,
                "wording_hash": digest,
                "double_opt_in": event.has_double_opt_in_evidence,
                "effective": applied.effective,
                "note": note,
            }
        )
    return rows
