"""The consent ledger fold: opt-outs, who may re-subscribe, cart reminders, CASL expiry."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartback.core.consent import (
    ConsentEvent,
    ConsentSource,
    erased_view,
    fold,
    history_rows,
    is_permitted,
    wording_hash,
)
from cartback.core.model import Channel, ConsentView, Purpose
from cartback.services.consent import LazyViews, views

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SMS = Channel.SMS
MKT = Purpose.MARKETING
CART = Purpose.CART_REMINDERS
TX = Purpose.TRANSACTIONAL
S = ConsentSource


def ev(
    minute: int,
    purpose: Purpose,
    granted: bool,
    source: ConsentSource,
    *,
    channel: Channel = SMS,
    **extra: object,
) -> ConsentEvent:
    return ConsentEvent(
        contact_id=7,
        channel=channel,
        purpose=purpose,
        granted=granted,
        source=source,
        at=T0 + timedelta(minutes=minute),
        **extra,  # type: ignore[arg-type]
    )


def test_empty_ledger_permits_nothing() -> None:
    view = fold([], SMS)
    assert view == ConsentView(channel=SMS)
    for purpose in Purpose:
        assert not is_permitted(view, purpose, T0)


def test_checkout_grant_permits_marketing_and_cart_reminders() -> None:
    view = fold([ev(0, MKT, True, S.CHECKOUT)], SMS)
    assert view.marketing and view.cart_reminders and not view.suppressed
    assert is_permitted(view, MKT, T0) and is_permitted(view, CART, T0)
    assert not is_permitted(view, TX, T0)


@pytest.mark.parametrize("source", list(ConsentSource))
def test_marketing_revoke_from_any_source_is_an_opt_out(source: ConsentSource) -> None:
    events = [
        ev(0, TX, True, S.CHECKOUT),
        ev(1, MKT, True, S.CHECKOUT),
        ev(2, CART, True, S.FORM),
        ev(3, MKT, False, source),
    ]
    view = fold(events, SMS)
    assert view.suppressed and not view.marketing and not view.cart_reminders
    assert view.opted_out_at == T0 + timedelta(minutes=3)
    assert view.transactional, "an opt-out leaves transactional messages alone"
    assert is_permitted(view, TX, T0) and not is_permitted(view, MKT, T0)


@pytest.mark.parametrize("source", [S.KEYWORD_REPLY, S.UNSUBSCRIBE_LINK, S.PROVIDER])
def test_cart_reminder_revoke_by_shopper_channel_is_a_full_opt_out(source: ConsentSource) -> None:
    view = fold([ev(0, MKT, True, S.FORM), ev(1, CART, False, source)], SMS)
    assert view.suppressed and not view.marketing and not view.cart_reminders


def test_transactional_revoke_by_keyword_opts_out_and_drops_transactional() -> None:
    view = fold([ev(0, TX, True, S.CHECKOUT), ev(1, TX, False, S.KEYWORD_REPLY)], SMS)
    assert view.suppressed and not view.transactional


@pytest.mark.parametrize("source", [S.FORM, S.ADMIN, S.API, S.IMPORT, S.CHECKOUT])
def test_cart_reminder_revoke_elsewhere_keeps_marketing(source: ConsentSource) -> None:
    view = fold([ev(0, MKT, True, S.FORM), ev(1, CART, False, source)], SMS)
    assert view.marketing and not view.cart_reminders and not view.suppressed
    assert is_permitted(view, MKT, T0) and not is_permitted(view, CART, T0)


@pytest.mark.parametrize("source", [S.IMPORT, S.ADMIN, S.API, S.PROVIDER])
def test_only_the_shopper_can_lift_an_opt_out(source: ConsentSource) -> None:
    events = [
        ev(0, MKT, True, S.FORM),
        ev(1, MKT, False, S.KEYWORD_REPLY),
        ev(2, MKT, True, source),
    ]
    view = fold(events, SMS)
    assert view.suppressed and not view.marketing
    assert not is_permitted(view, MKT, T0 + timedelta(days=1))
    row = history_rows(events)[-1]
    assert row["effective"] is False
    assert "cannot re-subscribe" in str(row["note"])


def test_import_note_names_the_import() -> None:
    rows = history_rows([ev(0, MKT, False, S.KEYWORD_REPLY), ev(1, MKT, True, S.IMPORT)])
    assert rows[1]["note"] == "ignored: an import cannot re-subscribe an opted-out contact"


@pytest.mark.parametrize("source", [S.KEYWORD_REPLY, S.FORM, S.CHECKOUT, S.UNSUBSCRIBE_LINK])
def test_shopper_grant_after_opt_out_re_subscribes(source: ConsentSource) -> None:
    events = [
        ev(0, MKT, True, S.FORM),
        ev(1, MKT, False, S.KEYWORD_REPLY),
        ev(2, MKT, True, source),
    ]
    view = fold(events, SMS)
    assert view.marketing and not view.suppressed and view.opted_out_at is None
    assert is_permitted(view, MKT, T0)
    assert history_rows(events)[-1]["effective"] is True


def test_start_after_stop_re_subscribes_and_stop_again_opts_out() -> None:
    events = [
        ev(0, MKT, True, S.CHECKOUT),
        ev(1, MKT, False, S.KEYWORD_REPLY),
        ev(2, MKT, True, S.KEYWORD_REPLY),
    ]
    assert is_permitted(fold(events, SMS), MKT, T0)
    again = fold([*events, ev(3, MKT, False, S.KEYWORD_REPLY)], SMS)
    assert again.suppressed and again.opted_out_at == T0 + timedelta(minutes=3)


def test_repeated_stop_keeps_the_first_opt_out_time() -> None:
    view = fold([ev(5, MKT, False, S.KEYWORD_REPLY), ev(9, MKT, False, S.KEYWORD_REPLY)], SMS)
    assert view.opted_out_at == T0 + timedelta(minutes=5)


def test_events_are_folded_in_time_order_not_list_order() -> None:
    stop_then_import = [ev(2, MKT, True, S.IMPORT), ev(1, MKT, False, S.KEYWORD_REPLY)]
    assert fold(stop_then_import, SMS).suppressed
    import_then_stop = [ev(2, MKT, False, S.KEYWORD_REPLY), ev(1, MKT, True, S.IMPORT)]
    assert fold(import_then_stop, SMS).suppressed
    grant_after_stop = [ev(2, MKT, True, S.FORM), ev(1, MKT, False, S.KEYWORD_REPLY)]
    assert fold(grant_after_stop, SMS).marketing


def test_equal_receive_times_are_ordered_by_id() -> None:
    grant = ev(1, MKT, True, S.FORM, id=2, received_at=T0)
    stop = ev(0, MKT, False, S.KEYWORD_REPLY, id=1, received_at=T0)
    assert fold([grant, stop], SMS).marketing
    assert not fold(
        [ev(0, MKT, True, S.FORM, id=1), ev(0, MKT, False, S.FORM, id=2)], SMS
    ).marketing


def test_channels_are_independent() -> None:
    events = [
        ev(0, MKT, True, S.FORM, channel=Channel.EMAIL),
        ev(0, MKT, True, S.FORM),
        ev(1, MKT, False, S.KEYWORD_REPLY),
    ]
    assert fold(events, SMS).suppressed
    email = fold(events, Channel.EMAIL)
    assert email.marketing and not email.suppressed and email.channel is Channel.EMAIL


def test_transactional_consent_never_permits_marketing() -> None:
    view = fold([ev(0, TX, True, S.CHECKOUT)], SMS)
    assert view.transactional
    assert is_permitted(view, TX, T0)
    assert not is_permitted(view, MKT, T0) and not is_permitted(view, CART, T0)


def test_explicit_cart_reminders_without_marketing() -> None:
    view = fold([ev(0, CART, True, S.CHECKOUT)], SMS)
    assert view.cart_reminders and not view.marketing
    assert is_permitted(view, CART, T0) and not is_permitted(view, MKT, T0)


def test_marketing_revoke_revokes_explicit_cart_reminders_too() -> None:
    view = fold([ev(0, CART, True, S.CHECKOUT), ev(1, MKT, False, S.FORM)], SMS)
    assert not view.cart_reminders and view.suppressed


def test_explicit_cart_revoke_survives_a_later_marketing_grant() -> None:
    events = [ev(0, CART, False, S.FORM), ev(1, MKT, True, S.FORM)]
    view = fold(events, SMS)
    assert view.marketing and not view.cart_reminders


def test_shopper_cart_grant_after_opt_out_lifts_suppression_only_for_cart_reminders() -> None:
    events = [ev(0, MKT, False, S.KEYWORD_REPLY), ev(1, CART, True, S.CHECKOUT)]
    view = fold(events, SMS)
    assert view.cart_reminders and not view.marketing and not view.suppressed
    assert is_permitted(view, CART, T0) and not is_permitted(view, MKT, T0)


def test_double_opt_in_follows_the_latest_effective_marketing_grant() -> None:
    confirmed = ev(0, MKT, True, S.FORM, double_opt_in_message_id="SM1", double_opt_in_at=T0)
    assert fold([confirmed], SMS).double_opt_in
    later_plain = ev(1, MKT, True, S.CHECKOUT)
    assert not fold([confirmed, later_plain], SMS).double_opt_in
    ignored = [
        confirmed,
        ev(1, MKT, False, S.KEYWORD_REPLY),
        ev(2, MKT, True, S.IMPORT, double_opt_in_message_id="x"),
    ]
    assert not fold(ignored, SMS).double_opt_in


CASL = {"implied_purchase": timedelta(days=730), "implied_inquiry": timedelta(days=180)}


@pytest.mark.parametrize(
    ("basis", "days", "permitted"),
    [
        ("implied_purchase", 729, True),
        ("implied_purchase", 730, False),
        ("implied_inquiry", 179, True),
        ("implied_inquiry", 180, False),
        ("express", 5000, True),
        ("soft_opt_in", 5000, True),
        (None, 5000, True),
    ],
)
def test_casl_implied_consent_expires(basis: str | None, days: int, permitted: bool) -> None:
    view = fold([ev(0, MKT, True, S.CHECKOUT, basis=basis)], SMS)
    assert view.basis == basis and view.basis_since == T0
    now = T0 + timedelta(days=days)
    assert is_permitted(view, MKT, now, implied_expiry=CASL) is permitted
    assert is_permitted(view, MKT, now) is permitted, "CASL periods are the default"
    assert is_permitted(view, CART, now) is permitted


def test_custom_implied_expiry_overrides_default() -> None:
    view = fold([ev(0, MKT, True, S.CHECKOUT, basis="implied_inquiry")], SMS)
    later = T0 + timedelta(days=100)
    assert not is_permitted(view, MKT, later, implied_expiry={"implied_inquiry": timedelta(30)})


def test_implied_consent_without_start_is_not_permitted() -> None:
    view = ConsentView(channel=SMS, marketing=True, basis="implied_purchase")
    assert not is_permitted(view, MKT, T0)


def test_a_new_purchase_restarts_implied_consent_but_never_downgrades_express() -> None:
    purchases = [
        ev(0, MKT, True, S.CHECKOUT, basis="implied_purchase"),
        ev(60 * 24 * 700, MKT, True, S.CHECKOUT, basis="implied_purchase"),
    ]
    assert is_permitted(fold(purchases, SMS), MKT, T0 + timedelta(days=1000))
    express = [ev(0, MKT, True, S.FORM, basis="express"), purchases[1]]
    view = fold(express, SMS)
    assert view.basis == "express" and view.basis_since == T0
    inquiry_after_purchase = [purchases[0], ev(60, MKT, True, S.FORM, basis="implied_inquiry")]
    assert fold(inquiry_after_purchase, SMS).basis == "implied_purchase"


def test_erased_view_permits_nothing() -> None:
    view = erased_view(SMS)
    assert view.erased and view.suppressed
    assert not any(is_permitted(view, purpose, T0) for purpose in Purpose)
    erased_with_flags = ConsentView(channel=SMS, marketing=True, transactional=True, erased=True)
    assert not any(is_permitted(erased_with_flags, purpose, T0) for purpose in Purpose)


def test_wording_hash_ignores_whitespace_and_normalisation_only() -> None:
    text = "Yes, text me cart reminders.\nMsg & data rates may apply."
    assert wording_hash(text) == wording_hash(
        "  Yes, text me   cart reminders. Msg & data rates may apply. "
    )
    assert wording_hash("Café") == wording_hash("Cafe\u0301")
    assert wording_hash(text) != wording_hash(text.replace("cart", "card"))
    assert len(wording_hash(text)) == 64 and int(wording_hash(text), 16) >= 0


def test_history_rows_show_every_event_with_effect_and_hash() -> None:
    events = [
        ev(0, MKT, True, S.FORM, wording="Text me offers", id=1),
        ev(1, MKT, False, S.KEYWORD_REPLY, id=2),
        ev(2, MKT, True, S.IMPORT, id=3),
        ev(3, MKT, True, S.KEYWORD_REPLY, id=4),
    ]
    rows = history_rows(reversed(events))
    assert [row["id"] for row in rows] == [1, 2, 3, 4]
    assert [row["effective"] for row in rows] == [True, True, False, True]
    assert rows[0]["wording_hash"] == wording_hash("Text me offers")
    assert rows[1]["note"] == "opt-out: marketing stopped"
    assert rows[3]["note"] == "re-subscribed by the shopper (keyword_reply)"
    assert rows[0]["time"] == T0 and rows[0]["channel"] == "sms" and rows[0]["source"] == "form"


def test_history_flags_a_stored_hash_that_does_not_match() -> None:
    rows = history_rows([ev(0, MKT, True, S.FORM, wording="a", wording_hash="0" * 64)])
    assert "does not match" in str(rows[0]["note"])


def test_plain_strings_are_coerced_and_bad_values_rejected() -> None:
    event = ConsentEvent(7, "sms", "marketing", True, "form", T0)  # type: ignore[arg-type]
    assert event.channel is Channel.SMS and event.source is S.FORM
    with pytest.raises(ValueError, match="unknown consent source"):
        ConsentEvent(7, SMS, MKT, True, "carrier_pigeon", T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="basis"):
        ev(0, MKT, True, S.FORM, basis="vibes")
    with pytest.raises(ValueError, match="datetime"):
        ConsentEvent(7, SMS, MKT, True, S.FORM, "2025-01-01")  # type: ignore[arg-type]


def test_fold_rejects_mixed_contacts_and_mixed_time_kinds() -> None:
    other = ConsentEvent(8, SMS, MKT, True, S.FORM, T0)
    with pytest.raises(ValueError, match="several contacts"):
        fold([ev(0, MKT, True, S.FORM), other], SMS)
    naive = ConsentEvent(7, SMS, MKT, True, S.FORM, datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        fold([ev(0, MKT, True, S.FORM), naive], SMS)


def test_is_permitted_rejects_naive_now_against_aware_basis() -> None:
    view = fold([ev(0, MKT, True, S.CHECKOUT, basis="implied_purchase")], SMS)
    with pytest.raises(ValueError, match="naive"):
        is_permitted(view, MKT, datetime(2025, 2, 1))


# A random ledger: any purposes, sources and times, then a shopper opt-out of marketing after
# which only non-marketing events (or other channels) follow.
events_strategy = st.lists(
    st.builds(
        ev,
        minute=st.integers(0, 10_000),
        purpose=st.sampled_from(list(Purpose)),
        granted=st.booleans(),
        source=st.sampled_from(list(ConsentSource)),
        channel=st.sampled_from(list(Channel)),
        basis=st.sampled_from([None, "express", "implied_purchase", "implied_inquiry"]),
    ),
    max_size=25,
)


@given(
    before=events_strategy,
    opt_out_source=st.sampled_from([S.KEYWORD_REPLY, S.UNSUBSCRIBE_LINK, S.PROVIDER]),
    after=st.lists(
        st.tuples(
            st.sampled_from([CART, TX]),
            st.booleans(),
            st.sampled_from(list(ConsentSource)),
            st.sampled_from(list(Channel)),
        ),
        max_size=10,
    ),
    days_later=st.integers(0, 2000),
)
def test_last_marketing_event_a_shopper_opt_out_means_no_marketing(
    before: list[ConsentEvent],
    opt_out_source: ConsentSource,
    after: list[tuple[Purpose, bool, ConsentSource, Channel]],
    days_later: int,
) -> None:
    opt_out = ev(20_000, MKT, False, opt_out_source)
    tail = [
        ev(20_001 + index, purpose, granted, source, channel=channel)
        for index, (purpose, granted, source, channel) in enumerate(after)
    ]
    view = fold([*before, opt_out, *tail], SMS)
    assert not view.marketing
    assert not is_permitted(view, MKT, T0 + timedelta(days=days_later))


@given(events=events_strategy)
def test_fold_is_order_independent_and_consistent(events: list[ConsentEvent]) -> None:
    numbered = [
        ConsentEvent(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "id": i})
        for i, e in enumerate(events)
    ]
    view = fold(numbered, SMS)
    assert view == fold(list(reversed(numbered)), SMS)
    assert not (view.suppressed and (view.marketing or view.cart_reminders))
    assert len(history_rows(numbered)) == len(numbered)


@given(events=events_strategy)
def test_lazy_views_fold_each_channel_on_demand_and_agree_with_views(
    events: list[ConsentEvent],
) -> None:
    lazy = LazyViews(iter(events))  # a one-shot iterable: LazyViews must keep its own copy
    assert dict(lazy) == views(events)
    assert len(lazy) == len(Channel) and lazy[SMS] is lazy[SMS]


# --- Receive order (issue 12, defect 2): the shop's clock never outranks the shopper's opt-out.


def _received(minute: int, event: ConsentEvent) -> ConsentEvent:
    return replace(event, received_at=T0 + timedelta(minutes=minute))


def test_an_opt_out_beats_a_grant_received_before_it_whatever_its_stamp() -> None:
    # The checkout was received at minute 0 but stamped 10 minutes ahead; the unsubscribe came
    # at minute 2. Ordered by the shop's time the grant would come last.
    grant = _received(0, ev(10, MKT, True, S.CHECKOUT, id=1, channel=Channel.EMAIL))
    leave = _received(2, ev(2, MKT, False, S.UNSUBSCRIBE_LINK, id=2, channel=Channel.EMAIL))
    view = fold([leave, grant], Channel.EMAIL)
    assert view.suppressed and not view.marketing
    assert not is_permitted(view, MKT, T0 + timedelta(minutes=30))
    assert view.opted_out_at == T0 + timedelta(minutes=2)


def test_opted_out_at_is_the_receive_time_not_the_shops() -> None:
    stop = _received(5, ev(1, MKT, False, S.KEYWORD_REPLY))
    assert fold([stop], SMS).opted_out_at == T0 + timedelta(minutes=5)


def test_a_grant_received_after_the_opt_out_but_stamped_before_it_is_ignored() -> None:
    stop = _received(5, ev(5, MKT, False, S.KEYWORD_REPLY, id=1))
    late = _received(6, ev(4, MKT, True, S.CHECKOUT, id=2))
    view = fold([stop, late], SMS)
    assert view.suppressed and not view.marketing
    rows = history_rows([stop, late])
    assert rows[1]["effective"] is False
    assert str(rows[1]["note"]).startswith("ignored: stamped before the opt-out was received")


def test_a_grant_stamped_exactly_at_the_opt_out_is_ignored() -> None:
    stop = _received(5, ev(5, MKT, False, S.UNSUBSCRIBE_LINK, id=1))
    tie = _received(6, ev(5, MKT, True, S.FORM, id=2))
    assert fold([stop, tie], SMS).suppressed


def test_a_grant_received_and_stamped_after_the_opt_out_resubscribes() -> None:
    stop = _received(5, ev(5, MKT, False, S.UNSUBSCRIBE_LINK, id=1))
    again = _received(9, ev(8, MKT, True, S.CHECKOUT, id=2))
    view = fold([stop, again], SMS)
    assert view.marketing and not view.suppressed and view.opted_out_at is None


def test_the_stamp_is_compared_with_the_latest_opt_out() -> None:
    first = _received(5, ev(5, MKT, False, S.KEYWORD_REPLY, id=1))
    second = _received(20, ev(20, MKT, False, S.UNSUBSCRIBE_LINK, id=2))
    between = _received(21, ev(10, MKT, True, S.CHECKOUT, id=3))
    view = fold([first, second, between], SMS)
    assert view.suppressed and view.opted_out_at == T0 + timedelta(minutes=5)


def test_a_clamped_grant_cannot_lift_an_opt_out_but_counts_otherwise() -> None:
    stop = _received(5, ev(5, MKT, False, S.UNSUBSCRIBE_LINK, id=1))
    clamped = _received(9, ev(9, MKT, True, S.CHECKOUT, id=2, shop_time_clamped=True))
    assert fold([stop, clamped], SMS).suppressed
    assert "shop's clock ran ahead" in str(history_rows([stop, clamped])[1]["note"])
    assert fold([clamped], SMS).marketing


def test_history_rows_show_the_shops_time_and_the_receive_time() -> None:
    grant = _received(3, ev(13, MKT, True, S.CHECKOUT, id=1))
    [row] = history_rows([grant])
    assert row["time"] == T0 + timedelta(minutes=13)
    assert row["received_at"] == T0 + timedelta(minutes=3)
    assert row["shop_time_clamped"] is False


def test_a_receive_time_must_be_a_datetime() -> None:
    with pytest.raises(ValueError, match="receive time"):
        ev(0, MKT, True, S.FORM, received_at="2025-01-01")


SHOPPER_OPT_OUTS = [S.KEYWORD_REPLY, S.UNSUBSCRIBE_LINK]
# One ledger entry as the test draws it: (granted, source, purpose, minutes the shop's stamp is
# off from the receive time). Shops run hours ahead or behind; the list's order is the order
# cartback received the entries in.
entry_strategy = st.tuples(
    st.booleans(),
    st.sampled_from(list(ConsentSource)),
    st.sampled_from([MKT, CART]),
    st.integers(-600, 600),
)


@given(
    entries=st.lists(entry_strategy, max_size=30),
    opt_out_at=st.integers(0, 30),
    opt_out_source=st.sampled_from(SHOPPER_OPT_OUTS),
    opt_out_skew=st.integers(-600, 600),
    late_grants=st.lists(
        st.tuples(st.sampled_from(list(ConsentSource)), st.integers(0, 600)), max_size=5
    ),
    shuffled=st.randoms(use_true_random=False),
)
def test_after_a_shopper_opt_out_no_earlier_received_grant_leaves_the_contact_subscribed(
    entries: list[tuple[bool, ConsentSource, Purpose, int]],
    opt_out_at: int,
    opt_out_source: ConsentSource,
    opt_out_skew: int,
    late_grants: list[tuple[ConsentSource, int]],
    shuffled: Any,
) -> None:
    """Random interleavings of grants and shopper opt-outs with random shop stamps. Whatever
    came before the shopper's opt-out, and whatever late reports of earlier grants follow it
    (received later, stamped no later than the opt-out was received), the contact is not
    subscribed to marketing or cart reminders, on the ledger's fold and on its history."""
    position = min(opt_out_at, len(entries))
    ledger = [
        ConsentEvent(
            contact_id=7,
            channel=SMS,
            purpose=purpose,
            granted=granted,
            source=source,
            at=T0 + timedelta(minutes=index + skew),
            received_at=T0 + timedelta(minutes=index),
            id=index,
        )
        for index, (granted, source, purpose, skew) in enumerate(entries[:position])
    ]
    received = T0 + timedelta(minutes=position)
    ledger.append(
        ConsentEvent(
            contact_id=7,
            channel=SMS,
            purpose=MKT,
            granted=False,
            source=opt_out_source,
            at=received + timedelta(minutes=opt_out_skew),
            received_at=received,
            id=position,
        )
    )
    for offset, (source, minutes_before) in enumerate(late_grants, start=1):
        ledger.append(
            ConsentEvent(
                contact_id=7,
                channel=SMS,
                purpose=MKT,
                granted=True,
                source=source,
                at=received - timedelta(minutes=minutes_before),
                received_at=received + timedelta(minutes=offset),
                id=position + offset,
            )
        )
    shuffled.shuffle(ledger)
    view = fold(ledger, SMS)
    assert view.suppressed and not view.marketing and not view.cart_reminders
    assert not is_permitted(view, MKT, received + timedelta(days=1))
    assert not is_permitted(view, CART, received + timedelta(days=1))
    assert view.opted_out_at is not None and view.opted_out_at <= received
