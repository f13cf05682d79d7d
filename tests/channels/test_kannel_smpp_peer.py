"""Kannel's own SMPP client against the SMPP simulator: the Kannel channel's failure reports.

The fake SMSC only ever reports success; behind a real SMPP bind, an undelivered receipt
(`stat:UNDELIV`) reaches our dlr-url as type 2 and becomes a failed DeliveryUpdate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cartback.channels.kannel import KannelChannel
from cartback.core.events import DeliveryStatus, DeliveryUpdate
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
from tests.support.smsc import SmscSimulator

TOKEN = "kannel-smpp-token"
WAIT = 30.0


@dataclass
class Rig:
    kannel: KannelRig
    smsc: SmscSimulator
    sink: CallbackSink
    channel: KannelChannel


# One pytest-xdist worker runs this module, so its module-wide fixture is set up once.
pytestmark = pytest.mark.xdist_group("kannel-smpp-peer")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ensure_kannel()
    smsc = SmscSimulator()
    smsc.start()
    with callback_sink() as sink:
        kannel = KannelRig(tmp_path_factory.mktemp("kannel-smpp"), mo_url="", smpp_port=smsc.port)
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
                    "from": "+4712345678",
                    "dlr_mask": "19",
                },
                status_url=sink.url("/status"),
                inbound_url=sink.url("/inbound"),
                timeout=5.0,
            )
        )
        kannel.mo_url = channel.mo_url()
        try:
            kannel.start()
            yield Rig(kannel, smsc, sink, channel)
        finally:
            channel.close()
            smsc.stop()
            kannel.stop()


def _request(callback: Callback) -> WebhookRequest:
    return WebhookRequest(
        method=callback.method,
        url=f"http://127.0.0.1{callback.path}",
        headers=callback.headers,
        body=callback.body,
        query=callback.query,
    )


def _final_report(rig: Rig, key: str) -> DeliveryUpdate:
    def reports() -> list[Callback]:
        return [c for c in rig.sink.on("/status") if c.query.get("key") == key]

    wait_until(lambda: bool(reports()), WAIT, f"the report for {key}")
    [callback] = reports()  # dlr-mask 19: final reports only
    request = _request(callback)
    assert rig.channel.verify(request)
    [update] = rig.channel.parse_status(request)
    return update


def test_delivered_and_undelivered_receipts_through_kannels_smpp_bind(rig: Rig) -> None:
    wait_until(lambda: rig.smsc.bound_sessions() > 0, WAIT, "Kannel's bind")
    for key, to in (("cb-201", "+4791234561"), ("cb-202", "+4791234560")):
        result = rig.channel.send(
            OutboundMessage(key=key, channel=Channel.SMS, to=to, body="Your cart")
        )
        assert result.status is SendStatus.ACCEPTED, result.error
    delivered = _final_report(rig, "cb-201")
    failed = _final_report(rig, "cb-202")
    assert delivered.status is DeliveryStatus.DELIVERED and delivered.error_code is None
    assert failed.status is DeliveryStatus.FAILED
    assert failed.error_code == "001"  # the carrier's err: from the receipt text
    assert {s.destination_addr[-10:] for s in rig.smsc.submitted} >= {"4791234561", "4791234560"}


def test_an_mo_over_smpp_reaches_the_post_url(rig: Rig) -> None:
    wait_until(lambda: rig.smsc.bound_sessions() > 0, WAIT, "Kannel's bind")
    rig.smsc.send_mo("4791234561", "4712345678", b"STOP")
    wait_until(lambda: bool(rig.sink.on("/inbound")), WAIT, "the MO at the post-url")
    [callback] = rig.sink.on("/inbound")
    request = _request(callback)
    assert rig.channel.verify(request)
    [reply] = rig.channel.parse_inbound(request)
    assert reply.text == "STOP"
    assert reply.sender.endswith("4791234561")
