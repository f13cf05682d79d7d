"""Delivery reports: what providers say happened to each message after it was sent.

A report finds its outbox row by our key (`cb-<outbox id>`, echoed in a callback URL or a
client reference) or else by (provider, provider id). States move forward only:

    sending | unknown  --sent-->  sent  --delivered-->  delivered
    sending | unknown | sent  --failed-->  failed

so a duplicate, or a `sent` arriving after `delivered`, changes nothing. A report for a row
still `sending` or `unknown` settles it: the provider had it. `delivered` writes
`delivered_at` (which `sms1.delivered` conditions read), `failed` writes `failed_at` and the
provider's error code. A permanent failure (an invalid number, a landline, an opt-out at the
carrier) suppresses the address for marketing in the consent ledger, with the rule named.
A report for a message cartback does not know is logged (without personal data) and ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, func, select, update

from cartback.core.consent import ConsentSource
from cartback.core.events import DeliveryStatus, DeliveryUpdate
from cartback.core.model import Channel, Purpose, Store
from cartback.services.consent import record_consent
from cartback.store import tables as t

log = logging.getLogger("cartback.delivery")

_KEY = re.compile(r"cb-(\d{1,18})")
# The states each report may move a message out of.
_FROM: Mapping[DeliveryStatus, tuple[str, ...]] = {
    DeliveryStatus.SENT: ("sending", "unknown"),
    DeliveryStatus.DELIVERED: ("sending", "unknown", "sent"),
    DeliveryStatus.FAILED: ("sending", "unknown", "sent"),
}
OPTED_OUT_RULE = "delivery.opted_out"
PERMANENT_RULE = "delivery.permanent_failure"
FAILED_RULE = "delivery.failed"


class Applied(StrEnum):
    # The report moved the message forward.
    CHANGED = "changed"
    # A duplicate or a report older than what is known: nothing changed.
    UNCHANGED = "unchanged"
    # No such message (another system's, or one erased since).
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    applied: Applied
    outbox_id: int | None = None
    # The rule under which the address was suppressed, if it was.
    suppressed: str | None = None


def apply_delivery(
    conn: Connection, store: Store, updates: Sequence[DeliveryUpdate], now: datetime
) -> list[DeliveryOutcome]:
    return [_apply_one(conn, store, update_, now) for update_ in updates]


def _find(conn: Connection, store_id: int, report: DeliveryUpdate) -> Any:
    o = t.outbox.c
    columns = (o.id, o.status, o.contact_id, o.channel, o.enrollment_id, o.step_id)
    match = _KEY.fullmatch(report.message_key or "")
    if match:
        row = conn.execute(
            select(*columns).where(o.id == int(match.group(1)), o.store_id == store_id)
        ).first()
        if row is not None:
            return row
    if report.provider_id:
        return conn.execute(
            select(*columns)
            .where(
                o.store_id == store_id,
                o.provider == report.provider,
                o.provider_id == report.provider_id,
            )
            .order_by(o.id.desc())
            .limit(1)
        ).first()
    return None


def _apply_one(
    conn: Connection, store: Store, report: DeliveryUpdate, now: datetime
) -> DeliveryOutcome:
    row = _find(conn, store.id, report)
    if row is None:
        # Answered 200 all the same: the provider would otherwise retry it for days.
        log.info(
            "delivery report from %s for an unknown message (key %s, id %s); ignored",
            report.provider,
            report.message_key or "-",
            report.provider_id or "-",
        )
        return DeliveryOutcome(Applied.UNKNOWN)
    o = t.outbox.c
    at = report.at or now
    values: dict[str, Any] = {
        "status": str(report.status),
        "provider": func.coalesce(o.provider, report.provider),
        "provider_id": func.coalesce(o.provider_id, report.provider_id),
        "lease_owner": None,
        "lease_until": None,
        "updated_at": now,
    }
    if report.status is DeliveryStatus.FAILED:
        values.update(
            failed_at=at,
            error_code=report.error_code,
            error=report.error or f"{report.provider} reported the message failed",
        )
    else:
        values.update(sent_at=func.coalesce(o.sent_at, at), error=None)
    if report.status is DeliveryStatus.DELIVERED:
        values["delivered_at"] = at
    moved = conn.execute(
        update(t.outbox).where(o.id == row.id, o.status.in_(_FROM[report.status])).values(**values)
    ).rowcount
    _record_amounts(conn, row.id, report)
    if not moved:
        return DeliveryOutcome(Applied.UNCHANGED, row.id)
    suppressed = None
    if report.status is DeliveryStatus.FAILED:
        suppressed = _after_failure(conn, store, row, report, now)
    return DeliveryOutcome(Applied.CHANGED, row.id, suppressed)


def _record_amounts(conn: Connection, outbox_id: int, report: DeliveryUpdate) -> None:
    """Segments and cost, whenever a report carries them (often only the last one does)."""
    amounts = {
        name: value
        for name, value in (("segments", report.segments), ("cost", report.cost))
        if value is not None
    }
    if amounts:
        conn.execute(update(t.outbox).where(t.outbox.c.id == outbox_id).values(**amounts))


def _after_failure(
    conn: Connection, store: Store, row: Any, report: DeliveryUpdate, now: datetime
) -> str | None:
    rule = OPTED_OUT_RULE if report.opted_out else PERMANENT_RULE if report.permanent else None
    what = report.error or report.error_code or "no reason given"
    reason = f"{report.provider} reported the message failed ({what})"
    if rule is not None and row.contact_id is not None:
        record_consent(
            conn,
            store_id=store.id,
            contact_id=row.contact_id,
            channel=Channel(row.channel),
            purpose=Purpose.MARKETING,
            granted=False,
            source=ConsentSource.PROVIDER,
            at=now,
            wording=f"{rule}: {reason}",
        )
        reason += "; the address is suppressed for marketing"
    _decide(conn, store.id, row, rule or FAILED_RULE, reason, now)
    return rule if row.contact_id is not None else None


def _decide(
    conn: Connection, store_id: int, row: Any, rule: str, reason: str, at: datetime
) -> None:
    """Add the failure to the cart's decision history (`cartback why`)."""
    if row.enrollment_id is None:
        return
    cart_id = conn.execute(
        select(t.enrollments.c.cart_id).where(t.enrollments.c.id == row.enrollment_id)
    ).scalar()
    if cart_id is None:
        return
    conn.execute(
        t.decisions.insert().values(
            store_id=store_id,
            enrollment_id=row.enrollment_id,
            cart_id=cart_id,
            step_id=row.step_id,
            outcome="undelivered",
            rule=rule,
            reason=reason,
            at=at,
        )
    )
