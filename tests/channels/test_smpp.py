"""The SMPP channel against a local SMSC (the `smpp34` server) through a PDU-counting tap."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cartback.channels.smpp import SmppChannel
from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.core.sms import count_segments
from cartback.ports import (
    LookupResult,
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendStatus,
    WebhookRequest,
)
from cartback.services.replies import dedup_key
from tests.support.kannel import wait_until
from tests.support.procs import free_port
from tests.support.smsc import (
    ENQUIRE_LINK,
    ENQUIRE_LINK_RESP,
    ESME_RINVDSTADR,
    ESME_RTHROTTLED,
    PduTap,
    SmscSimulator,
)

WAIT = 10.0


# One pytest-xdist worker runs this module, so its module-wide fixture is set up once.
pytestmark = pytest.mark.xdist_group("smsc")


@pytest.fixture(scope="module")
def smsc() -> Iterator[SmscSimulator]:
    simulator = SmscSimulator()
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def tap(smsc: SmscSimulator) -> Iterator[PduTap]:
    relay = PduTap(smsc.port)
    relay.start()
    yield relay
    relay.stop()


def _config(port: int, timeout: float = 3.0, **options: str) -> ProviderConfig:
    return ProviderConfig(
        provider="smpp",
        kind=Channel.SMS,
        store="demo",
        options={
            "host": "127.0.0.1",
            "port": str(port),
            "system_id": "cartback",
            "password": "pw",
            "from": "Shop",
            "reconnect_max_seconds": "0.5",
            **options,
        },
        status_url="https://cb.example/hooks/channel/smpp/demo/status",
        inbound_url="https://cb.example/hooks/channel/smpp/demo/inbound",
        timeout=timeout,
    )


@pytest.fixture
def channel(smsc: SmscSimulator, tap: PduTap) -> Iterator[SmppChannel]:
    smsc.silent, smsc.reject_with, smsc.receipt_first = False, None, False
    made = SmppChannel(_config(tap.port))
    assert made.wait_bound(WAIT)
    yield made
    made.close()


def _send(channel: SmppChannel, body: str, key: str = "cb-1", to: str = "+4791234561"):  # type: ignore[no-untyped-def]
    return channel.send(OutboundMessage(key=key, channel=Channel.SMS, to=to, body=body))


def _wait_events(channel: SmppChannel, count: int) -> list[DeliveryUpdate | InboundReply]:
    events: list[DeliveryUpdate | InboundReply] = []
    deadline = time.monotonic() + WAIT
    while len(events) < count and time.monotonic() < deadline:
        events.extend(channel.drain(wait=0.1))
    assert len(events) >= count, f"got {events}"
    return events


def test_a_gsm_message_is_submitted_and_its_delivered_receipt_recorded(
    smsc: SmscSimulator, channel: SmppChannel
) -> None:
    before = len(smsc.submitted)
    result = _send(channel, "Your cart is waiting {50% off}", key="cb-11")
    assert result.status is SendStatus.ACCEPTED
    [submitted] = smsc.submitted[before:]
    assert result.provider_id == submitted.message_id and result.segments == 1
    assert (submitted.data_coding, submitted.esm_class, submitted.registered_delivery) == (0, 0, 1)
    assert submitted.destination_addr == "4791234561"
    assert (submitted.source_addr, submitted.source_addr_ton) == ("Shop", 5)
    # GSM-7 septets, one octet each; `{` and `}` go as escape + code.
    assert submitted.short_message == b"Your cart is waiting \x1b(50% off\x1b)"
    [update] = _wait_events(channel, 1)
    assert isinstance(update, DeliveryUpdate)
    assert update.status is DeliveryStatus.DELIVERED
    assert (update.message_key, update.provider_id) == ("cb-11", submitted.message_id)
    assert update.error_code is None and update.at is not None
    assert channel.lookup("cb-11") == LookupResult(LookupStatus.SENT, submitted.message_id)


def test_a_receipt_that_overtakes_its_submit_sm_resp_still_carries_the_key(
    smsc: SmscSimulator, channel: SmppChannel
) -> None:
    smsc.receipt_first = True
    try:
        result = _send(channel, "Your cart", key="cb-17")
    finally:
        smsc.receipt_first = False
    assert result.status is SendStatus.ACCEPTED
    [update] = _wait_events(channel, 1)
    assert isinstance(update, DeliveryUpdate)
    assert (update.message_key, update.provider_id) == ("cb-17", result.provider_id)


def test_an_undelivered_receipt_is_recorded_as_failed(channel: SmppChannel) -> None:
    result = _send(channel, "Your cart", key="cb-12", to="+4791234560")
    assert result.status is SendStatus.ACCEPTED
    [update] = _wait_events(channel, 1)
    assert isinstance(update, DeliveryUpdate)
    assert update.status is DeliveryStatus.FAILED
    assert (update.message_key, update.provider_id) == ("cb-12", result.provider_id)
    assert update.error_code == "001" and update.raw["stat"] == "UNDELIV"


def test_ucs2_text_goes_as_data_coding_8(smsc: SmscSimulator, channel: SmppChannel) -> None:
    before = len(smsc.submitted)
    text = "Ваша корзина ✓"
    assert _send(channel, text).status is SendStatus.ACCEPTED
    [submitted] = smsc.submitted[before:]
    assert submitted.data_coding == 8
    assert submitted.short_message.decode("utf-16-be") == text


def test_a_long_gsm_message_goes_as_153_plus_47_with_a_udh(
    smsc: SmscSimulator, channel: SmppChannel
) -> None:
    text = "".join(f"{n:03d}ab" for n in range(40))
    before = len(smsc.submitted)
    result = _send(channel, text, key="cb-13")
    assert result.status is SendStatus.ACCEPTED and result.segments == 2
    first, second = smsc.submitted[before:]
    assert first.esm_class == second.esm_class == 0x40
    udh = [part.short_message[:6] for part in (first, second)]
    assert [u[:3] for u in udh] == [b"\x05\x00\x03"] * 2
    assert udh[0][3] == udh[1][3]
    assert [u[4:] for u in udh] == [b"\x02\x01", b"\x02\x02"]
    payloads = [part.short_message[6:] for part in (first, second)]
    assert [len(p) for p in payloads] == [153, 47]
    assert b"".join(payloads).decode("ascii") == text
    assert result.provider_id == first.message_id
    # Both parts' receipts carry our key and the message's provider id.
    receipts = [u for u in _wait_events(channel, 2) if isinstance(u, DeliveryUpdate)]
    assert len(receipts) == 2
    assert {(u.message_key, u.provider_id) for u in receipts} == {("cb-13", first.message_id)}


def test_a_long_ucs2_message_never_splits_a_surrogate_pair(
    smsc: SmscSimulator, channel: SmppChannel
) -> None:
    text = "Привет 😀 " * 12
    before = len(smsc.submitted)
    result = _send(channel, text)
    parts = smsc.submitted[before:]
    assert result.segments == len(parts) == count_segments(text).segments
    decoded = [part.short_message[6:].decode("utf-16-be") for part in parts]  # strict
    assert "".join(decoded) == text
    assert all(part.data_coding == 8 for part in parts)


def test_an_mo_message_becomes_an_inbound_reply(smsc: SmscSimulator, channel: SmppChannel) -> None:
    smsc.send_mo("4791234561", "Shop", b"STOP")
    smsc.send_mo("4791234561", "Shop", "Стоп".encode("utf-16-be"), data_coding=8)
    first, second = _wait_events(channel, 2)
    assert isinstance(first, InboundReply) and isinstance(second, InboundReply)
    assert (first.sender, first.text, first.to) == ("+4791234561", "STOP", "Shop")
    assert second.text == "Стоп"


def test_the_same_mo_text_sent_twice_is_two_replies(
    smsc: SmscSimulator, channel: SmppChannel
) -> None:
    # SMPP gives an MO no id: without its receive time, STOP, START, STOP would find the
    # second STOP "already recorded" and leave the shopper subscribed.
    smsc.send_mo("4791234561", "Shop", b"STOP")
    smsc.send_mo("4791234561", "Shop", b"STOP")
    first, second = _wait_events(channel, 2)
    assert isinstance(first, InboundReply) and isinstance(second, InboundReply)
    assert first.at is not None and second.at is not None
    assert dedup_key(first) != dedup_key(second)


def test_a_concatenated_mo_is_joined(smsc: SmscSimulator, channel: SmppChannel) -> None:
    header = b"\x05\x00\x03\x07\x02"
    smsc.send_mo("4791234561", "Shop", header + b"\x01please stop ", esm_class=0x40)
    smsc.send_mo("4791234561", "Shop", header + b"\x02texting me", esm_class=0x40)
    [reply] = _wait_events(channel, 1)
    assert isinstance(reply, InboundReply) and reply.text == "please stop texting me"


def test_an_idle_bind_sends_enquire_link(smsc: SmscSimulator, tap: PduTap) -> None:
    channel = SmppChannel(_config(tap.port, enquire_link_seconds="0.2"))
    try:
        assert channel.wait_bound(WAIT)
        wait_until(lambda: channel.enquire_links_answered >= 2, WAIT, "enquire_link answers")
        assert tap.count(tap.from_esme, ENQUIRE_LINK) >= 2
        assert tap.count(tap.from_smsc, ENQUIRE_LINK_RESP) >= 2
        assert channel.binds == 1
    finally:
        channel.close()


def test_the_channel_binds_again_after_the_smsc_drops_it(
    smsc: SmscSimulator, tap: PduTap, channel: SmppChannel
) -> None:
    assert _send(channel, "before").status is SendStatus.ACCEPTED
    _wait_events(channel, 1)
    tap.sever()
    wait_until(lambda: channel.binds == 2 and channel.bound, WAIT, "a new bind")
    assert tap.connections == 2
    result = _send(channel, "after", key="cb-14")
    assert result.status is SendStatus.ACCEPTED
    [update] = _wait_events(channel, 1)
    assert isinstance(update, DeliveryUpdate) and update.message_key == "cb-14"


def test_a_receipt_the_application_cannot_take_is_answered_with_a_temporary_error(
    smsc: SmscSimulator, tap: PduTap
) -> None:
    taken: list[DeliveryUpdate] = []

    def refuse_once(update: DeliveryUpdate) -> None:
        if not taken:
            taken.append(update)
            raise RuntimeError("database unavailable")

    channel = SmppChannel(_config(tap.port), on_update=refuse_once)
    try:
        assert channel.wait_bound(WAIT)
        before = len(smsc.receipt_answers)
        assert _send(channel, "hello", key="cb-16").status is SendStatus.ACCEPTED
        # Receipts of earlier tests' messages may still be answered on the shared simulator:
        # look for this one's answer among those that came after.
        wait_until(
            lambda: 0x64 in smsc.receipt_answers[before:], WAIT, "the receipt's temporary error"
        )
        assert taken[0].message_key == "cb-16"
        assert channel.events.empty()
    finally:
        channel.close()


def test_no_submit_sm_resp_in_time_is_unknown(smsc: SmscSimulator, tap: PduTap) -> None:
    channel = SmppChannel(_config(tap.port, timeout=0.5))
    try:
        assert channel.wait_bound(WAIT)
        smsc.silent = True
        result = _send(channel, "hello", key="cb-15")
        assert result.status is SendStatus.UNKNOWN
        assert channel.lookup("cb-15") is LookupStatus.UNKNOWN
    finally:
        smsc.silent = False
        channel.close()


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(ESME_RTHROTTLED, True), (ESME_RINVDSTADR, False)],
)
def test_a_refused_submit_is_rejected(
    smsc: SmscSimulator, channel: SmppChannel, status: int, retryable: bool
) -> None:
    smsc.reject_with = status
    try:
        result = _send(channel, "hello")
    finally:
        smsc.reject_with = None
    assert result.status is SendStatus.REJECTED
    assert result.retryable is retryable
    assert result.error_code == f"0x{status:08x}"


def test_no_bind_is_a_retryable_refusal() -> None:
    channel = SmppChannel(_config(free_port(), timeout=0.3))
    try:
        result = _send(channel, "hello")
    finally:
        channel.close()
    assert (result.status, result.retryable) == (SendStatus.REJECTED, True)


def test_receipts_match_ids_across_hex_and_decimal_and_read_the_text_alone() -> None:
    channel = SmppChannel(_config(free_port()), start=False)
    channel._remember("cb-20", "5a0ff", ["5a0ff"])
    text = (
        b"id:368895 sub:001 dlvrd:000 submit date:2601011200 done date:2601011205 "
        b"stat:EXPIRED err:000 text:"
    )
    update = channel.receipt_update(
        text, receipted_message_id=None, message_state=None, network_error=None
    )
    assert update is not None
    assert (update.message_key, update.provider_id) == ("cb-20", "5a0ff")
    assert update.status is DeliveryStatus.FAILED and update.error_code == "EXPIRED"
    rejected = channel.receipt_update(
        b"", receipted_message_id="abc", message_state=8, network_error=b"\x03\x00\x0b"
    )
    assert rejected is not None
    assert (rejected.status, rejected.permanent, rejected.error_code) == (
        DeliveryStatus.FAILED,
        True,
        "11",
    )
    assert rejected.message_key is None and rejected.provider_id == "abc"


def test_smpp_takes_no_http_callbacks() -> None:
    channel = SmppChannel(_config(free_port()), start=False)
    request = WebhookRequest(method="POST", url="https://cb.example/x", headers={}, body=b"")
    assert not channel.verify(request)
    assert channel.parse_status(request) == [] and channel.parse_inbound(request) == []


def test_the_bind_opens_on_first_use_only(smsc: SmscSimulator, tap: PduTap) -> None:
    channel = SmppChannel(_config(tap.port))
    try:
        request = WebhookRequest(method="POST", url="https://cb.example/x", headers={}, body=b"")
        channel.verify(request)
        channel.parse_status(request)
        time.sleep(0.3)  # long enough for a bind to show, were one started
        assert tap.connections == 0 and not channel.bound
        assert channel.drain() == []
        assert channel.wait_bound(WAIT) and tap.connections == 1
    finally:
        channel.close()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="system_id"):
        SmppChannel(_config(2775, system_id=""))
    with pytest.raises(ValueError, match="enquire_link_seconds"):
        SmppChannel(_config(2775, enquire_link_seconds="often"))
    with pytest.raises(ValueError, match="source_ton"):
        SmppChannel(_config(2775, source_ton="five"))
