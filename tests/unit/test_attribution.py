"""core.attribution: one touch per order, windows per channel and event, click > open > delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cartback.core.attribution import (
    AttributionSettings,
    MatchedBy,
    Model,
    SettingsError,
    Touch,
    TouchKind,
    attribute,
    settings_from,
)
from cartback.services.reports import Money, check_settings, money_from

ORDER = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
DEFAULTS = AttributionSettings()


def touch(message_id: int, channel: str, **times: object) -> Touch:
    return Touch(
        message_id=message_id,
        enrollment_id=1,
        flow="f",
        step_id=f"{channel}{message_id}",
        variant=None,
        channel=channel,
        **times,  # type: ignore[arg-type]
    )


def ago(**kw: float) -> datetime:
    return ORDER - timedelta(**kw)


def test_an_sms_click_beats_a_later_email_open() -> None:
    sms = touch(1, "sms", clicks=(ago(days=1),), delivered_at=ago(days=1, minutes=5))
    email = touch(2, "email", opens=(ago(hours=1),))
    credit = attribute(ORDER, [sms, email], [], DEFAULTS)
    assert credit is not None
    assert (credit.touch.message_id, credit.kind, credit.matched_by) == (
        1,
        TouchKind.CLICK,
        MatchedBy.CART,
    )


def test_an_open_beats_a_later_delivery_and_the_latest_click_wins() -> None:
    email = touch(1, "email", opens=(ago(hours=20),))
    sms = touch(2, "sms", delivered_at=ago(hours=1))
    assert attribute(ORDER, [email, sms], [], DEFAULTS).kind is TouchKind.OPEN  # type: ignore[union-attr]
    early = touch(3, "sms", clicks=(ago(days=2),))
    late = touch(4, "email", clicks=(ago(days=1),))
    credit = attribute(ORDER, [early, late], [], DEFAULTS)
    assert credit is not None and credit.touch.message_id == 4


@pytest.mark.parametrize(
    ("channel", "field", "inside", "outside"),
    [
        ("sms", "clicks", timedelta(days=5), timedelta(days=5, seconds=1)),
        ("sms", "delivered_at", timedelta(hours=24), timedelta(hours=24, seconds=1)),
        ("email", "clicks", timedelta(days=5), timedelta(days=5, seconds=1)),
        ("email", "opens", timedelta(hours=24), timedelta(hours=24, seconds=1)),
    ],
)
def test_default_windows_end_exactly_at_their_length(
    channel: str, field: str, inside: timedelta, outside: timedelta
) -> None:
    def at(gap: timedelta) -> Touch:
        when = ORDER - gap
        value: object = when if field == "delivered_at" else (when,)
        return touch(1, channel, **{field: value})

    assert attribute(ORDER, [at(inside)], [], DEFAULTS) is not None
    assert attribute(ORDER, [at(outside)], [], DEFAULTS) is None


def test_events_after_the_order_and_email_deliveries_earn_nothing() -> None:
    after = touch(1, "sms", clicks=(ORDER + timedelta(minutes=1),))
    delivered_email = touch(2, "email", delivered_at=ago(minutes=5))
    assert attribute(ORDER, [after, delivered_email], [], DEFAULTS) is None


def test_the_contact_is_asked_only_when_the_cart_has_no_qualifying_touch() -> None:
    cart_touch = touch(1, "sms", delivered_at=ago(hours=2))
    contact_touch = touch(2, "sms", clicks=(ago(hours=1),))
    credit = attribute(ORDER, [cart_touch], [contact_touch], DEFAULTS)
    assert credit is not None and credit.matched_by is MatchedBy.CART
    stale = touch(1, "sms", delivered_at=ago(days=3))
    credit = attribute(ORDER, [stale], [contact_touch], DEFAULTS)
    assert credit is not None
    assert (credit.touch.message_id, credit.matched_by) == (2, MatchedBy.CONTACT)


def test_first_touch_takes_the_earliest_of_the_best_kind() -> None:
    settings = AttributionSettings(model=Model.FIRST_TOUCH)
    first = touch(1, "sms", clicks=(ago(days=3),))
    second = touch(2, "email", clicks=(ago(days=1),))
    opened = touch(3, "email", opens=(ago(days=4),))
    credit = attribute(ORDER, [second, first, opened], [], settings)
    assert credit is not None and credit.touch.message_id == 1


def test_store_settings_change_windows_and_model() -> None:
    settings = settings_from(
        {
            "attribution": {
                "model": "first_touch",
                "windows": {"sms": {"delivery": "off", "click": "2d"}, "email": {"delivery": "6h"}},
            }
        }
    )
    assert settings.model is Model.FIRST_TOUCH
    assert ("sms", TouchKind.DELIVERY) not in settings.windows
    assert settings.windows[("sms", TouchKind.CLICK)] == timedelta(days=2)
    assert settings.windows[("email", TouchKind.DELIVERY)] == timedelta(hours=6)
    assert settings.windows[("email", TouchKind.OPEN)] == timedelta(hours=24)
    delivered = touch(1, "sms", delivered_at=ago(hours=1))
    assert attribute(ORDER, [delivered], [], settings) is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"attribution": {"model": "linear"}}, "attribution.model"),
        ({"attribution": {"windows": {"push": {}}}}, "attribution.windows.push"),
        ({"attribution": {"windows": {"sms": {"view": "1d"}}}}, "attribution.windows.sms.view"),
        (
            {"attribution": {"windows": {"sms": {"click": "5 days"}}}},
            "attribution.windows.sms.click",
        ),
        ({"rates": {"EUR": 1.1}}, "rates.EUR"),
        ({"rates": {"EUR": "-1"}}, "rates.EUR"),
        ({"prices": {"sms": {"NO": "x"}}}, "prices.sms.NO"),
        ({"currency": "kroner"}, "currency"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_settings_name_their_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=f"^{field}:"):
        check_settings(raw, "USD")


def test_money_converts_with_the_store_rates_and_prices_by_country() -> None:
    money = money_from(
        {
            "currency": "nok",
            "rates": {"EUR": "11.50"},
            "prices": {"sms": {"NO": "0.45", "*": "0.9"}},
        },
        "USD",
    )
    assert money.currency == "NOK"
    assert money.convert(Decimal("10.00"), "EUR") == Decimal("115.0000")
    assert money.convert(Decimal("10.00"), "NOK") == Decimal("10.00")
    assert money.convert(Decimal("10.00"), "GBP") is None
    assert (money.sms_price("NO"), money.sms_price("SE"), money.sms_price(None)) == (
        Decimal("0.45"),
        Decimal("0.9"),
        Decimal("0.9"),
    )
    assert Money(currency="USD").sms_price("NO") is None
