"""The Kannel channel against a real Kannel: bearerbox, smsbox and the fake SMSC (fakesmsc).

fakesmsc is the phone side: it logs each MT Kannel delivers and sends the MO lines a test
types into it. Kannel calls our dlr-url and post-url on a local HTTP sink, and the channel
parses exactly what Kannel sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlencode

import pytest

from cartback.channels.kannel import KannelChannel
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, ProviderConfig, SendStatus, WebhookRequest
from tests.support.kannel import (
    PASSWORD,
    Callback,
    CallbackSink,
    KannelRig,
    callback_sink,
    ensure_kannel,
    wait_until,
)

TOKEN = "kannel-rig-token"
PHONE = "+4791234567"
WAIT = 15.0


@dataclass
class Rig:
    kannel: KannelRig
    sink: CallbackSink
    channel: KannelChannel


# One pytest-xdist worker runs this module, so its module-wide fixture is set up once.
pytestmark = pytest.mark.xdist_group("kannel-peer")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ensure_kannel()
    with callback_sink() as sink:
        kannel = KannelRig(tmp_path_factory.mktemp("kannel"), mo_url="")
        channel = KannelChannel(
            ProviderConfig(
                provider="kannel",
                kind=Channel.SMS,
                store="demo",
                options={
                    "sendsms_url": kannel.sendsms_url,
                    "username": "tester",
                    "password": PASSWORD,
                    "callback_token": TOKEN,
                    "from": "12345",
                },
                status_url=sink.url("/status"),
                inbound_url=sink.url("/inbound"),
                timeout=5.0,
            )
        )
        kannel.mo_url = channel.mo_url()
        try:
            kannel.start()
            yield Rig(kannel, sink, channel)
        finally:
            channel.close()
            kannel.stop()


def _as_request(callback: Callback) -> WebhookRequest:
    return WebhookRequest(
        method=callback.method,
        url=f"http://127.0.0.1{callback.path}?{urlencode(callback.query)}",
        headers=callback.headers,
        body=callback.body,
        query=callback.query,
    )


def _send(rig: Rig, key: str, body: str) -> None:
    result = rig.channel.send(OutboundMessage(key=key, channel=Channel.SMS, to=PHONE, body=body))
    assert result.status is SendStatus.ACCEPTED, result.error


def _lines_after(rig: Rig, count: int, min_lines: int) -> list[str]:
    wait_until(lambda: len(rig.kannel.received()) >= count + min_lines, WAIT, "fakesmsc MTs")
    return rig.kannel.received()[count:]


def _payload(line: str) -> bytes:
    # `sender receiver type [udh] msg`, every field URL-encoded except plain text.
    return unquote_to_bytes(line.split(" ")[-1].replace("+", " "))


def test_an_sms_reaches_the_phone_and_its_report_marks_it_delivered(rig: Rig) -> None:
    before = len(rig.kannel.received())
    _send(rig, "cb-101", "Your cart is waiting")
    [line] = _lines_after(rig, before, 1)
    assert line == f"12345 {PHONE} text Your cart is waiting"

    def reports() -> list[Callback]:
        return [c for c in rig.sink.on("/status") if c.query.get("key") == "cb-101"]

    wait_until(lambda: any(c.query.get("status") == "1" for c in reports()), WAIT, "the DLR")
    updates = []
    for callback in reports():
        request = _as_request(callback)
        assert rig.channel.verify(request)
        updates.extend(rig.channel.parse_status(request))
    assert {u.message_key for u in updates} == {"cb-101"}
    assert DeliveryStatus.DELIVERED in {u.status for u in updates}
    delivered = next(u for u in updates if u.status is DeliveryStatus.DELIVERED)
    assert delivered.at is not None and delivered.error_code is None
    assert "token" not in delivered.raw


def test_a_stop_typed_on_the_phone_reaches_the_post_url(rig: Rig) -> None:
    rig.kannel.type_mo(PHONE, "12345", "STOP")
    wait_until(lambda: bool(rig.sink.on("/inbound")), WAIT, "the MO at the post-url")
    [callback] = rig.sink.on("/inbound")
    request = _as_request(callback)
    assert rig.channel.verify(request)
    [reply] = rig.channel.parse_inbound(request)
    assert (reply.sender, reply.text, reply.to) == (PHONE, "STOP", "12345")
    assert reply.channel is Channel.SMS and reply.provider == "kannel"
    assert reply.provider_id and reply.at is not None
    forged = WebhookRequest(
        method="POST",
        url=request.url,
        headers=request.headers,
        body=request.body,
        query={**request.query, "token": "guess"},
    )
    assert not rig.channel.verify(forged)


def test_ucs2_text_arrives_intact(rig: Rig) -> None:
    text = "Ваша корзина ждёт ✓ 😀"
    before = len(rig.kannel.received())
    _send(rig, "cb-102", text)
    [line] = _lines_after(rig, before, 1)
    assert line.split(" ")[2] == "ucs-2"
    assert _payload(line).decode("utf-16-be") == text


def test_a_200_character_gsm_message_arrives_as_153_plus_47(rig: Rig) -> None:
    text = "".join(f"{n:03d}ab" for n in range(40))  # 200 GSM-7 characters
    assert len(text) == 200
    before = len(rig.kannel.received())
    _send(rig, "cb-103", text)
    first, second = _lines_after(rig, before, 2)
    udh = [bytes(unquote_to_bytes(line.split(" ")[3])) for line in (first, second)]
    parts = [_payload(line).decode("ascii") for line in (first, second)]
    assert [u[:3] for u in udh] == [b"\x05\x00\x03", b"\x05\x00\x03"]
    assert udh[0][3] == udh[1][3]  # one concatenation reference
    assert [u[4:] for u in udh] == [b"\x02\x01", b"\x02\x02"]
    assert [len(p) for p in parts] == [153, 47]
    assert "".join(parts) == text


def test_a_wrong_password_is_a_permanent_refusal(rig: Rig, tmp_path: Path) -> None:
    channel = KannelChannel(
        ProviderConfig(
            provider="kannel",
            kind=Channel.SMS,
            store="demo",
            options={
                "sendsms_url": rig.kannel.sendsms_url,
                "username": "tester",
                "password": "wrong",
                "callback_token": TOKEN,
            },
            status_url=rig.sink.url("/status"),
            inbound_url=rig.sink.url("/inbound"),
            timeout=5.0,
        )
    )
    try:
        result = channel.send(
            OutboundMessage(key="cb-104", channel=Channel.SMS, to=PHONE, body="hi")
        )
    finally:
        channel.close()
    assert result.status is SendStatus.REJECTED
    assert not result.retryable
    assert result.error_code == "403"
