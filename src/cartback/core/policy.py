"""Send-time policy: may this message go now, later, or never?

Pure: `now` is an argument. Gates run in a fixed order and the first that objects decides:
consent → suppression → exit conditions → jurisdiction → quiet hours → cooldown and caps.
Every Defer and Skip names the rule that decided and says why in words a merchant can read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from cartback.core.jurisdiction import (
    DAY_NAMES,
    EXPIRING_BASES,
    CapScope,
    DayWindow,
    Rule,
    RuleSet,
    SoftOptInRule,
    WindowRule,
    resolve_rules,
)
from cartback.core.model import CartStatus, Channel, ConsentView, Contact, PhoneFacts, Purpose
from cartback.core.money import Rates
from cartback.core.timezones import candidate_zones, region_for_phone

# How far ahead next_window_open looks; no window within it means the message cannot be sent.
SEARCH_HORIZON = timedelta(days=14)
_NOUN = {Channel.SMS: "texts", Channel.EMAIL: "marketing emails"}
_KNOWN_BASES = frozenset({"express", *EXPIRING_BASES})


@dataclass(frozen=True, slots=True)
class SentRecord:
    """One message already sent (or claimed for sending) to the contact."""

    channel: Channel
    at: datetime
    cart_id: int
    # What the message was about; messages about one cart share a subject.
    subject: str | None = None

    @property
    def subject_key(self) -> str:
        return self.subject or f"cart:{self.cart_id}"


@dataclass(frozen=True, slots=True)
class Cap:
    count: int
    window: timedelta

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a cap allows at least 1 message, not {self.count}")
        if self.window <= timedelta(0):
            raise ValueError("a cap window must be positive")


@dataclass(frozen=True, slots=True)
class StorePolicy:
    default_zone: str = "UTC"
    sms_cooldown: timedelta = timedelta(hours=2)
    email_cooldown: timedelta = timedelta(0)
    sms_cap: Cap | None = field(default_factory=lambda: Cap(3, timedelta(hours=24)))
    email_cap: Cap | None = None
    # Rule pack overrides (pack rule format); pass them to resolve_rules, which checks that
    # each only tightens.
    rule_overrides: tuple[Mapping[str, Any], ...] = ()
    # The store's exchange rates, for flow amounts stated in another currency than the cart's.
    rates: Rates | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.sms_cooldown < timedelta(0) or self.email_cooldown < timedelta(0):
            raise ValueError("cooldowns cannot be negative")


@dataclass(frozen=True, slots=True)
class SendRequest:
    channel: Channel
    step_id: str
    cart_id: int
    contact: Contact
    consent: ConsentView
    cart_status: CartStatus
    abandoned_at: datetime
    # The contact's sends of the last 7 days across all flows, claimed ones included, but not
    # the message being evaluated.
    recent_sends: tuple[SentRecord, ...]
    store_policy: StorePolicy
    rules: RuleSet
    # Defaults to the cart: every message about one cart shares a subject.
    subject: str | None = None

    @property
    def subject_key(self) -> str:
        return self.subject or f"cart:{self.cart_id}"


@dataclass(frozen=True, slots=True)
class Allow:
    # The message must be out before this instant (quiet hours begin, or the rule's deadline
    # passes); None when nothing closes within a day. A send held up longer is not sent late.
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Defer:
    until: datetime
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    rule: str
    reason: str


Decision = Allow | Defer | Skip


def rules_for_contact(contact: Contact, channel: Channel, store_policy: StorePolicy) -> RuleSet:
    """The RuleSet for a contact: the phone number's and the shipping address's jurisdictions."""
    facts = contact.phone_facts
    if facts is None:
        phone_country, phone_region = region_for_phone(contact.phone)
    else:
        phone_country, phone_region = facts.country, facts.region
    return resolve_rules(
        phone_country=phone_country,
        phone_region=phone_region,
        ship_country=contact.country,
        ship_region=contact.region,
        channel=channel,
        store_overrides=store_policy.rule_overrides,
    )


def contact_zones(contact: Contact, store_policy: StorePolicy) -> tuple[ZoneInfo, ...]:
    facts = contact.phone_facts
    try:
        return _zones_of(
            contact.zone,
            contact.country,
            contact.region,
            # The number is read only when no facts were stored with it.
            contact.phone if facts is None else None,
            store_policy.default_zone,
            facts,
            tuple(contact.postal_zones),
        )
    except TypeError:  # facts built with a list of zones cannot key the cache
        return candidate_zones(
            explicit=contact.zone,
            country=contact.country,
            region=contact.region,
            phone=contact.phone,
            store_default=store_policy.default_zone,
            facts=facts,
            postal_zones=contact.postal_zones,
        )


@lru_cache(maxsize=65536)
def _zones_of(
    explicit: str | None,
    country: str | None,
    region: str | None,
    phone: str | None,
    store_default: str,
    facts: PhoneFacts | None,
    postal_zones: tuple[str, ...],
) -> tuple[ZoneInfo, ...]:
    """candidate_zones, kept per shopper's place: every send decision asks for them, and many
    shoppers share a state and a phone prefix."""
    return candidate_zones(
        explicit=explicit,
        country=country,
        region=region,
        phone=phone,
        store_default=store_default,
        facts=facts,
        postal_zones=postal_zones,
    )


def evaluate(request: SendRequest, now: datetime) -> Decision:
    """Decide one send at `now`. A Defer must be evaluated again at its `until`."""
    _check_request(request, now)
    now = now.astimezone(UTC)
    for gate in (_consent, _suppression, _exit, _jurisdiction):
        skip = gate(request, now)
        if skip is not None:
            return skip
    zones = contact_zones(request.contact, request.store_policy)
    decision = _quiet_hours(request, now, zones)
    if decision is not None:
        return decision
    return _cooldown_and_caps(request, now, zones)


def _check_request(request: SendRequest, now: datetime) -> None:
    for label, moment in (("now", now), ("abandoned_at", request.abandoned_at)):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{label} must be timezone-aware")
    if any(sent.at.tzinfo is None for sent in request.recent_sends):
        raise ValueError("recent_sends times must be timezone-aware")
    if request.consent.channel != request.channel:
        raise ValueError(
            f"consent is for {request.consent.channel}, the message is {request.channel}"
        )
    if request.rules.channel != request.channel:
        raise ValueError(f"rules are for {request.rules.channel}, the message is {request.channel}")
    basis = request.consent.basis
    if basis is not None and basis not in _KNOWN_BASES:
        raise ValueError(f"unknown consent basis {basis!r}; expected one of {sorted(_KNOWN_BASES)}")


# --- gates 1-4: yes or no ----------------------------------------------------------------------


def _consent(request: SendRequest, now: datetime) -> Skip | None:
    consent, channel, rules = request.consent, request.channel, request.rules
    if not (consent.marketing or consent.cart_reminders):
        if consent.transactional:
            return Skip(
                "consent.marketing",
                f"the shopper only agreed to transactional {channel} messages; "
                "that never permits marketing",
            )
        return Skip("consent.marketing", f"the shopper has not agreed to {channel} marketing")
    if consent.basis == "soft_opt_in" and not rules.soft_opt_in_allowed:
        forbidding = next(
            (rule for rule in rules.rules if isinstance(rule, SoftOptInRule) and not rule.allowed),
            None,
        )
        what = "the soft opt-in (an existing customer's details) as consent"
        if forbidding is None:
            return Skip("consent.soft_opt_in", f"no rule that applies here accepts {what}")
        return Skip(forbidding.name, f"{forbidding.title} does not accept {what}")
    key = EXPIRING_BASES.get(consent.basis or "")
    if key is None:
        return None
    for rule in rules.implied_expiries:
        period = rule.expiry_for(key)
        if period is None:
            continue
        if consent.basis_since is None:
            return Skip(
                rule.name, f"{rule.title}: {key} consent without a start date cannot be used"
            )
        expired = consent.basis_since + period
        if now >= expired:
            return Skip(
                rule.name,
                f"expired: {rule.title} lets {key} consent last {period.days} days; "
                f"it started {consent.basis_since:%Y-%m-%d} and ended {expired:%Y-%m-%d}",
            )
    return None


def _suppression(request: SendRequest, now: datetime) -> Skip | None:
    consent, channel, contact = request.consent, request.channel, request.contact
    if consent.erased:
        return Skip("consent.erased", "the shopper's data was erased on request")
    if consent.suppressed:
        since = f" on {consent.opted_out_at:%Y-%m-%d}" if consent.opted_out_at else ""
        return Skip(
            "consent.opted_out",
            f"the shopper opted out of {channel} marketing{since}; that stops every marketing "
            f"{channel} message from the brand",
        )
    if channel is Channel.SMS and not contact.phone:
        return Skip("contact.no_phone", "the contact has no phone number")
    if channel is Channel.EMAIL and not contact.email:
        return Skip("contact.no_email", "the contact has no email address")
    return None


def _exit(request: SendRequest, now: datetime) -> Skip | None:
    if request.cart_status is CartStatus.ORDERED:
        return Skip("exit.order_placed", f"cart {request.cart_id} has been ordered")
    if request.cart_status is CartStatus.EMPTIED:
        return Skip("exit.cart_emptied", f"cart {request.cart_id} was emptied")
    return None


def _jurisdiction(request: SendRequest, now: datetime) -> Skip | None:
    rules, consent = request.rules, request.consent
    once = rules.cart_sms_once
    if once is not None:
        earlier = [
            sent.at
            for sent in request.recent_sends
            if sent.channel is Channel.SMS and sent.cart_id == request.cart_id
        ]
        if earlier:
            return Skip(
                once.name,
                f"{once.title} allow one text per cart; cart {request.cart_id} already had one "
                f"at {min(earlier).astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            )
        deadline = request.abandoned_at + once.within
        if now >= deadline:
            return Skip(once.name, f"expired: {_deadline_text(once.title, once.within, deadline)}")
    double = rules.double_opt_in
    if double is not None and not consent.double_opt_in:
        return Skip(double.name, f"{double.title} require a confirmed (double) opt-in")
    for rule in rules.required_purposes:
        if not _purpose_granted(consent, rule.purpose):
            return Skip(rule.name, f"{rule.title} require consent that names {rule.purpose}")
    return None


def _purpose_granted(consent: ConsentView, purpose: Purpose) -> bool:
    if purpose is Purpose.CART_REMINDERS:
        return consent.cart_reminders
    if purpose is Purpose.MARKETING:
        return consent.marketing
    return consent.transactional


def _deadline_text(title: str, within: timedelta, deadline: datetime) -> str:
    hours = int(within.total_seconds() // 3600)
    return (
        f"{title} allow a cart text only within {hours} h of abandonment, "
        f"until {deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    )


# --- gates 5-6: now or later -------------------------------------------------------------------


def _deadline(request: SendRequest) -> tuple[datetime, Rule, str] | None:
    once = request.rules.cart_sms_once
    if once is None:
        return None
    deadline = request.abandoned_at + once.within
    return (deadline, once, _deadline_text(once.title, once.within, deadline))


def _later(request: SendRequest, until: datetime, rule: str, reason: str) -> Defer | Skip:
    """Defer to `until`, unless that is past the message's deadline."""
    deadline = _deadline(request)
    if deadline is not None and until >= deadline[0]:
        return Skip(deadline[1].name, f"expired: {reason}; {deadline[2]}")
    return Defer(until=until, rule=rule, reason=reason)


def _quiet_hours(
    request: SendRequest, now: datetime, zones: tuple[ZoneInfo, ...]
) -> Decision | None:
    violation = first_violation(now, zones, request.rules, request.channel)
    if violation is None:
        return None
    rule, reason = violation
    until = next_window_open(now, zones, request.rules)
    if until is None:
        return Skip(rule.name, f"{reason}; no allowed time in the next 14 days")
    return _later(request, until, rule.name, f"{reason}; next allowed {_local(until, zones)}")


def _cooldown_and_caps(
    request: SendRequest, now: datetime, zones: tuple[ZoneInfo, ...]
) -> Decision:
    blockers = _cooldown(request, now) + _caps(request, now)
    if not blockers:
        return Allow(until=_send_before(request, now, zones))
    until, rule, reason = max(blockers, key=lambda blocker: blocker[0])
    opens = next_window_open(until, zones, request.rules)
    if opens is None:
        return Skip(rule, f"{reason}; no allowed time in the 14 days after")
    return _later(request, opens, rule, f"{reason}; next allowed {_local(opens, zones)}")


def _send_before(
    request: SendRequest, now: datetime, zones: tuple[ZoneInfo, ...]
) -> datetime | None:
    closes = window_closes(now, zones, request.rules)
    deadline = _deadline(request)
    if deadline is None:
        return closes
    return deadline[0] if closes is None else min(closes, deadline[0])


def _cooldown(request: SendRequest, now: datetime) -> list[tuple[datetime, str, str]]:
    channel, store = request.channel, request.store_policy
    cooldown = store.sms_cooldown if channel is Channel.SMS else store.email_cooldown
    times = [sent.at for sent in request.recent_sends if sent.channel is channel]
    if cooldown <= timedelta(0) or not times:
        return []
    until = max(times).astimezone(UTC) + cooldown
    if now >= until:
        return []
    minutes = int(cooldown.total_seconds() // 60)
    return [
        (
            until,
            f"store.{channel}_cooldown",
            f"the store waits {minutes} min between {_NOUN[channel]} to one shopper; "
            f"the last went at {max(times).astimezone(UTC):%H:%M} UTC",
        )
    ]


def _caps(request: SendRequest, now: datetime) -> list[tuple[datetime, str, str]]:
    channel, store = request.channel, request.store_policy
    store_cap = store.sms_cap if channel is Channel.SMS else store.email_cap
    caps: list[tuple[str, str, int, timedelta, CapScope]] = [
        (rule.name, rule.title, rule.count, rule.window, rule.scope) for rule in request.rules.caps
    ]
    if store_cap is not None:
        caps.append(
            (
                f"store.{channel}_cap",
                "The store",
                store_cap.count,
                store_cap.window,
                CapScope.ALL_MARKETING,
            )
        )
    blockers = []
    for name, title, count, window, scope in caps:
        counted = sorted(
            sent.at.astimezone(UTC)
            for sent in request.recent_sends
            if sent.channel is channel
            and sent.at > now - window
            and (scope is CapScope.ALL_MARKETING or sent.subject_key == request.subject_key)
        )
        if len(counted) < count:
            continue
        # Enough of the oldest must leave the window for one more to fit under the cap.
        until = counted[len(counted) - count] + window
        what = "on the same subject" if scope is CapScope.SUBJECT else "in all"
        hours = int(window.total_seconds() // 3600)
        blockers.append(
            (
                until,
                name,
                f"{title} allows at most {count} {_NOUN[channel]} per {hours} h {what}; "
                f"{len(counted)} went in the last {hours} h",
            )
        )
    return blockers


# --- quiet hours in every candidate zone -------------------------------------------------------


def day_allowed(rules: RuleSet, zone: ZoneInfo, day: date) -> DayWindow | None:
    """The local span allowed on `day` in `zone`; None on a closed day, Sunday or holiday."""
    if rules.no_sundays and day.weekday() == 6:
        return None
    if any(rule.holiday_name(day) for rule in rules.no_holidays):
        return None
    return rules.day_window(day.weekday())


def is_allowed(at: datetime, zones: tuple[ZoneInfo, ...], rules: RuleSet) -> bool:
    """True when `at` is inside the allowed window in every candidate zone."""
    _require_aware(at)
    for zone in zones:
        local = at.astimezone(zone)
        window = day_allowed(rules, zone, local.date())
        if window is None or not window.contains(local.hour * 60 + local.minute):
            return False
    return True


def first_violation(
    at: datetime, zones: tuple[ZoneInfo, ...], rules: RuleSet, channel: Channel
) -> tuple[Rule, str] | None:
    """The first rule that forbids sending at `at` in some candidate zone, with the reason. The
    reason gives the local time in every candidate zone, the objecting one first."""
    _require_aware(at)
    noun = _NOUN[channel]
    for zone in zones:
        local = at.astimezone(zone)
        weekday = local.weekday()
        # The clock text is built only for the reason returned: most checks find no violation.
        if weekday == 6:
            for sunday in rules.no_sundays:
                clock = _clock_from(at, zone, zones)
                return (sunday, f"{sunday.title} allows no {noun} on Sundays; {clock}")
        for holiday in rules.no_holidays:
            label = holiday.holiday_name(local.date())
            if label:
                return (
                    holiday,
                    f"{holiday.title} allows no {noun} on public holidays; "
                    f"{local:%Y-%m-%d} is {label} in {zone.key}; {_clock_from(at, zone, zones)}",
                )
        for window in rules.windows:
            day = window.week[weekday]
            if day is None:
                return (
                    window,
                    f"{window.title} allows no {noun} on {DAY_NAMES[weekday]}s; "
                    f"{_clock_from(at, zone, zones)}",
                )
            if not day.contains(local.hour * 60 + local.minute):
                return (
                    window,
                    f"{window.title} allows {noun} {_span(window, weekday)}; "
                    f"{_clock_from(at, zone, zones)}",
                )
    return None


def _clock_from(at: datetime, zone: ZoneInfo, zones: tuple[ZoneInfo, ...]) -> str:
    """_clock with the objecting zone first."""
    return _clock(at, (zone, *(other for other in zones if other != zone)))


def _span(rule: WindowRule, weekday: int) -> str:
    text = f"{rule.week[weekday]} local time"
    if len(set(rule.week)) > 1:
        text += f" on {DAY_NAMES[weekday]}s"
    return text


def next_window_open(now: datetime, zones: tuple[ZoneInfo, ...], rules: RuleSet) -> datetime | None:
    """The earliest instant ≥ now (aware UTC) allowed in EVERY candidate zone, respecting the
    weekday windows, no-send days and holidays; None if there is none within 14 days."""
    _require_aware(now)
    if not zones:
        raise ValueError("next_window_open needs at least one candidate zone")
    start = now.astimezone(UTC)
    for span_start, span_end in _spans_from(start, zones, rules):
        if span_end > start:
            opens = max(span_start, start)
            return opens if opens < start + SEARCH_HORIZON else None
    return None


# Allowed spans are computed once per UTC day, zone set and rule set, far enough ahead for any
# instant of that day: the timer and the simulator ask for the same few sets again and again.
_SPAN_DAYS = timedelta(days=16)


def _spans_from(start: datetime, zones: tuple[ZoneInfo, ...], rules: RuleSet) -> tuple[Span, ...]:
    """The spans allowed in every zone from the UTC midnight before `start` for 16 days: they
    cover SEARCH_HORIZON and CLOSE_HORIZON from any instant of that day."""
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    return _day_spans(midnight, zones, rules)


@lru_cache(maxsize=32768)
def _day_spans(midnight: datetime, zones: tuple[ZoneInfo, ...], rules: RuleSet) -> tuple[Span, ...]:
    end = midnight + _SPAN_DAYS
    allowed = [(midnight, end)]
    for zone in zones:
        allowed = _intersect(allowed, _zone_spans(zone, rules, midnight, _SPAN_DAYS.days))
        if not allowed:
            break
    return tuple(allowed)


_DAY = timedelta(days=1)


def _zone_spans(zone: ZoneInfo, rules: RuleSet, midnight: datetime, days: int) -> list[Span]:
    """_zone_allowed over [midnight, midnight + days), stitched from cached single UTC days.

    The set of allowed instants does not depend on where [start, end) is cut, and _merge joins
    spans that touch, so stitching the days gives the spans of one long call; a window spanning
    UTC midnight is joined back together here. Consecutive UTC days share 15 of their 16 days.
    """
    spans: list[Span] = []
    day = midnight
    for _ in range(days):
        for span_start, span_end in _zone_day(zone, rules, day):
            if spans and span_start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], span_end))
            else:
                spans.append((span_start, span_end))
        day += _DAY
    return spans


@lru_cache(maxsize=65536)
def _zone_day(zone: ZoneInfo, rules: RuleSet, midnight: datetime) -> tuple[Span, ...]:
    return tuple(_zone_allowed(zone, rules, midnight, midnight + _DAY))


# How far ahead window_closes looks: no allowed window is longer than a day.
CLOSE_HORIZON = timedelta(hours=26)


def window_closes(now: datetime, zones: tuple[ZoneInfo, ...], rules: RuleSet) -> datetime | None:
    """When the allowed span holding `now` ends in some candidate zone: `now` itself if `now` is
    not allowed, None if the span lasts past CLOSE_HORIZON. Asked for every message allowed."""
    _require_aware(now)
    start = now.astimezone(UTC)
    for span_start, span_end in _spans_from(start, zones, rules):
        if span_end > start:
            if span_start > start:
                return start
            return None if span_end >= start + CLOSE_HORIZON else span_end
    return start


Span = tuple[datetime, datetime]


def _zone_allowed(zone: ZoneInfo, rules: RuleSet, start: datetime, end: datetime) -> list[Span]:
    """The allowed UTC spans in [start, end) for one zone.

    Within a stretch of constant UTC offset, local time is UTC plus that offset, so a local
    window maps back exactly; a DST gap or fold just splits the stretch. A window opening at a
    wall time that does not exist that day opens when the clocks jump past it.
    """
    spans: list[Span] = []
    for seg_start, seg_end, offset in _offset_segments(zone, start, end):
        local_start = (seg_start + offset).replace(tzinfo=None)
        local_end = (seg_end + offset).replace(tzinfo=None)
        day = local_start.date()
        while day <= local_end.date():
            window = day_allowed(rules, zone, day)
            if window is not None:
                midnight = datetime.combine(day, time(0), tzinfo=UTC) - offset
                open_at = max(seg_start, midnight + timedelta(minutes=window.start))
                close_at = min(seg_end, midnight + timedelta(minutes=window.end))
                if open_at < close_at:
                    spans.append((open_at, close_at))
            day += timedelta(days=1)
    return _merge(spans)


def _offset_segments(
    zone: ZoneInfo, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, timedelta]]:
    """[start, end) cut into stretches of constant UTC offset (hourly probe, then bisection)."""
    segments = []
    seg_start = start
    offset = _offset(zone, start)
    probe = start
    while probe < end:
        step = min(probe + timedelta(hours=1), end)
        if _offset(zone, step) != offset:
            change = _transition(zone, probe, step, offset)
            segments.append((seg_start, change, offset))
            seg_start, offset = change, _offset(zone, change)
            # Probe again from the change: two transitions within one hour stay separate.
            probe = change
            continue
        probe = step
    segments.append((seg_start, end, offset))
    return segments


def _transition(zone: ZoneInfo, low: datetime, high: datetime, before: timedelta) -> datetime:
    """The first instant in (low, high] whose offset differs from `before`.

    tz transitions fall on whole seconds, so the search runs on POSIX seconds and is exact.
    """
    low_second, high_second = math.floor(low.timestamp()), math.ceil(high.timestamp())
    while high_second - low_second > 1:
        middle = (low_second + high_second) // 2
        if _offset(zone, datetime.fromtimestamp(middle, UTC)) == before:
            low_second = middle
        else:
            high_second = middle
    return datetime.fromtimestamp(high_second, UTC)


def _offset(zone: ZoneInfo, at: datetime) -> timedelta:
    offset = at.astimezone(zone).utcoffset()
    if offset is None:
        raise ValueError(f"zone {zone.key} gives no UTC offset")
    return offset


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span_start, span_end in sorted(spans):
        if merged and span_start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], span_end))
        else:
            merged.append((span_start, span_end))
    return merged


def _intersect(left: list[Span], right: list[Span]) -> list[Span]:
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        low, high = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if low < high:
            result.append((low, high))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return result


def _clock(at: datetime, zones: tuple[ZoneInfo, ...]) -> str:
    """`it is 20:30 on Tuesday in America/New_York, 19:30 on Tuesday in America/Chicago`."""
    times = []
    for zone in zones:
        local = at.astimezone(zone)
        times.append(f"{local:%H:%M} on {DAY_NAMES[local.weekday()]} in {zone.key}")
    return "it is " + ", ".join(times)


def _local(at: datetime, zones: tuple[ZoneInfo, ...]) -> str:
    """An instant in every candidate zone, then in UTC: each zone's clock is quoted with its own
    name, so a reason never pairs one zone's name with another zone's time."""
    times = ", ".join(f"{at.astimezone(zone):%Y-%m-%d %H:%M} {zone.key}" for zone in zones)
    return f"{times} ({at.astimezone(UTC):%H:%M} UTC)"


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
