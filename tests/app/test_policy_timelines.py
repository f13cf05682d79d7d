"""The default flow under the send policy, as `cartback flows test` shows it: the scenarios a
merchant asks about, each decided by a named rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cartback.core.flows import default_flow_path, load_flow
from cartback.core.model import Store
from cartback.simulate import TimelineEntry, timeline
from cartback.web.intake import parse_event_document

STORE = Store(
    id=1, name="DemoShop", brand="DemoShop", domains=("shop.example",), postal_address="1 Demo St"
)
CONSENT_ALL = {
    "sms_marketing": True,
    "email_marketing": True,
    "cart_reminders": True,
    "double_opt_in": True,
}


def _run(
    occurred_at: str, phone: str, country: str, region: str | None = None, **extra: Any
) -> list[TimelineEntry]:
    event: dict[str, Any] = {
        "id": "e1",
        "type": "checkout.updated",
        "occurred_at": occurred_at,
        "cart_token": "c1",
        "contact": {"phone": phone, "email": "shopper@example.com", "first_name": "Sam"},
        "shipping": {"country": country, "region": region},
        "lines": [{"title": "Rain jacket", "quantity": 1, "price": "120.00"}],
        "currency": "USD",
        "restore_url": "https://shop.example/cart/c1",
        "consent": CONSENT_ALL,
    }
    event.update(extra)
    events = parse_event_document(json.dumps(event).encode())
    return timeline(load_flow(default_flow_path()), STORE, events)


def _sent(entries: list[TimelineEntry], channel: str) -> list[TimelineEntry]:
    return [e for e in entries if e.outcome == "send" and e.channel == channel]


def test_a_norwegian_number_gets_three_sms_and_three_emails() -> None:
    entries = _run("2026-11-23T10:00:00+01:00", "+4791234567", "NO")
    assert len(_sent(entries, "sms")) == 3
    assert len(_sent(entries, "email")) == 3


def test_a_us_number_with_reminder_consent_gets_one_sms_and_three_emails() -> None:
    entries = _run("2026-11-23T14:00:00-05:00", "+12125550123", "US", "NY")
    assert len(_sent(entries, "sms")) == 1
    assert len(_sent(entries, "email")) == 3
    skipped = [e for e in entries if e.outcome == "skip"]
    assert {e.rule for e in skipped} == {"us.cart_sms_once"}


def test_a_florida_number_abandoning_at_1950_is_deferred_to_0800() -> None:
    # Checkout at 19:40, abandoned at 19:50, first SMS due 20:05 local: after Florida's 20:00.
    entries = _run("2026-11-23T19:40:00-05:00", "+13055550123", "US", "FL")
    deferred = next(e for e in entries if e.outcome == "defer")
    assert deferred.step_id == "sms1"
    assert deferred.rule is not None and deferred.rule.startswith("us.fl")
    sms = _sent(entries, "sms")
    assert len(sms) == 1
    # Florida spans two zones and the window must hold in both: 08:00 in the Central-time
    # panhandle is 09:00 in Miami, 14:00 UTC.
    assert sms[0].at == datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert "08:00" in deferred.reason


def test_a_maryland_sms_held_for_quiet_hours_does_not_hold_back_email1() -> None:
    # Checkout at 20:20 in Baltimore, abandoned at 20:30: sms1 (20:45) is after Maryland's
    # 20:00 close and waits for 08:00; email1 goes at its own 21:30 that evening.
    entries = _run("2026-11-23T20:20:00-05:00", "+14105550123", "US", "MD")
    deferred = next(e for e in entries if e.outcome == "defer")
    assert (deferred.step_id, deferred.rule) == ("sms1", "us.md.quiet_hours")
    assert "held until 2026-11-24 13:00 UTC" in deferred.reason
    [email1] = [e for e in _sent(entries, "email") if e.step_id == "email1"]
    assert email1.at == datetime(2026, 11, 24, 2, 30, tzinfo=UTC)  # 21:30 in Baltimore
    [sms1] = _sent(entries, "sms")
    assert sms1.at == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)  # 08:00 the next morning
    assert email1.at < sms1.at


def test_without_sms_consent_only_emails_go_out() -> None:
    entries = _run(
        "2026-11-23T10:00:00+01:00", "+4791234567", "NO", consent={"email_marketing": True}
    )
    assert _sent(entries, "sms") == []
    assert len(_sent(entries, "email")) == 3


def test_a_us_number_without_cart_reminder_consent_gets_no_sms() -> None:
    entries = _run(
        "2026-11-23T14:00:00-05:00",
        "+12125550123",
        "US",
        "NY",
        consent={"sms_marketing": True, "email_marketing": True},
    )
    assert _sent(entries, "sms") == []
    sms1 = next(e for e in entries if e.step_id == "sms1")
    assert sms1.outcome == "skip" and sms1.rule is not None


def test_an_emoji_product_name_is_counted_or_shortened_to_fit_one_segment() -> None:
    entries = _run(
        "2026-11-23T10:00:00+01:00",
        "+4791234567",
        "NO",
        lines=[
            {"title": "Rain jacket 🧥 with a very long name indeed", "quantity": 1, "price": "120"}
        ],
    )
    for sms in _sent(entries, "sms"):
        assert sms.segments == 1
        assert sms.encoding in ("GSM-7", "UCS-2")
        assert sms.text is not None
        if sms.encoding == "GSM-7":
            assert "🧥" not in sms.text


def test_every_skip_and_deferral_names_its_rule() -> None:
    for args in (
        ("2026-11-23T14:00:00-05:00", "+12125550123", "US", "NY"),
        ("2026-11-23T19:40:00-05:00", "+13055550123", "US", "FL"),
    ):
        entries = _run(*args)
        assert all(e.rule for e in entries if e.outcome in ("skip", "defer"))


def test_a_miami_zip_with_a_305_number_is_deferred_to_0800_eastern() -> None:
    # The same checkout as above, with the address's ZIP: Miami is Eastern time, so 08:00 in
    # Miami (13:00 UTC), not 08:00 in the panhandle.
    entries = _run(
        "2026-11-23T19:40:00-05:00",
        "+13055550123",
        "US",
        shipping={"country": "US", "region": "FL", "postal_code": "33130"},
    )
    deferred = next(e for e in entries if e.outcome == "defer")
    assert deferred.step_id == "sms1"
    assert deferred.rule == "us.fl.quiet_hours"
    assert "next allowed 2026-11-24 08:00 America/New_York (13:00 UTC)" in deferred.reason
    assert "America/Chicago" not in deferred.reason
    assert _sent(entries, "sms")[0].at == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def _sms3(currency: str, price: str) -> TimelineEntry:
    entries = _run(
        "2026-11-23T10:00:00+01:00",
        "+4791234567",
        "NO",
        currency=currency,
        lines=[{"title": "Rain jacket", "quantity": 1, "price": price}],
    )
    return next(e for e in entries if e.step_id == "sms3" and e.outcome != "defer")


def test_a_nok_cart_of_1200_and_a_usd_cart_of_90_meet_the_right_thresholds() -> None:
    nok = _sms3("NOK", "1200")
    assert nok.outcome == "send"
    assert nok.text is not None and "COMEBACK10" in nok.text
    usd = _sms3("USD", "90")
    assert (usd.outcome, usd.rule) == ("skip", "when")
    # 100 in the cart's own currency: enough in dollars, not in kroner.
    assert _sms3("USD", "100").outcome == "send"
    assert _sms3("NOK", "100").outcome == "skip"


def test_a_cart_in_a_currency_the_flow_does_not_state_is_skipped_by_name() -> None:
    jpy = _sms3("JPY", "50000")
    assert (jpy.outcome, jpy.rule) == ("skip", "flow.currency")
    assert jpy.reason.startswith("a JPY cart cannot be compared: amounts.large_cart is stated in")
