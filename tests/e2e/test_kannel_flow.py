"""A store sending through a real Kannel (bearerbox, smsbox, fakesmsc as the phone), driven by
a running `cartback serve`: the first SMS reaches the phone and Kannel's delivery report marks
it delivered (so the step that waits for `sms1.delivered` goes out too); a STOP typed on the
phone opts the shopper out, exactly one confirmation reaches the phone, and the last step is
skipped with the reason `opted_out`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from tests.support.faultrig import daytime_number
from tests.support.kannel import PASSWORD, KannelRig, ensure_kannel, wait_until
from tests.support.procs import free_port
from tests.support.served import WAIT, Served, flow_with_steps, served

# A number whose zone is in daytime now: the texts must not wait for the morning.
PHONE = daytime_number(datetime.now(UTC), 1)
SENDER = "12345"
TOKEN = "kannel-e2e-token"
FOOTER = "\nReply STOP to opt out"
FLOW = flow_with_steps(
    """\
  - id: sms1
    at: 1s
    channel: sms
    when: contact.sms_consent
    body: '{{ brand }}: your cart is waiting'
  - id: sms2
    at: 6s
    channel: sms
    when: sms1.delivered
    body: '{{ brand }}: still thinking about it?'
  - id: sms3
    at: 14s
    channel: sms
    body: '{{ brand }}: last call for your cart'
"""
)


@dataclass
class Rig:
    kannel: KannelRig
    port: int  # where `cartback serve` listens, and Kannel's post-url points


# One pytest-xdist worker runs this module, so its module-wide fixture is set up once.
pytestmark = pytest.mark.xdist_group("kannel-flow")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ensure_kannel()
    port = free_port()
    inbound = f"http://127.0.0.1:{port}/hooks/channel/kannel/demo/inbound"
    kannel = KannelRig(
        tmp_path_factory.mktemp("kannel"),
        mo_url=f"{inbound}?token={TOKEN}&from=%p&to=%P&at=%T&id=%I",
    )
    try:
        kannel.start()
        yield Rig(kannel, port)
    finally:
        kannel.stop()


def _texts_to(rig: Rig, phone: str, since: int) -> list[str]:
    """The texts fakesmsc received for `phone`, after the first `since` it received."""
    texts = []
    for line in _received(rig)[since:]:
        _, receiver, kind, message = line.split(" ", 3)
        if receiver != phone:
            continue
        if kind == "ucs-2":
            message = unquote_to_bytes(message.rsplit(" ", 1)[-1]).decode("utf-16-be")
        texts.append(message)
    return texts


def _received(rig: Rig) -> list[str]:
    """Every MT fakesmsc logged, `sender receiver type [udh] msg`. fakesmsc logs each line of
    a text as a message of its own: a line without that prefix continues the one before."""
    messages: list[str] = []
    for entry in rig.kannel.received():
        if messages and not re.match(r"\S+ \S+ (text|ucs-2|data) ", entry):
            messages[-1] += "\n" + entry
        else:
            messages.append(entry)
    return messages


def test_kannel_delivers_reports_and_takes_a_stop(
    rig: Rig, database_url: str, tmp_path: Path
) -> None:
    provider = [
        "kannel",
        "--option",
        f"sendsms_url={rig.kannel.sendsms_url}",
        "--option",
        "username=tester",
        "--option",
        f"from={SENDER}",
        "--secret",
        "password=env:CB_TEST_KANNEL_PASSWORD",
        "--secret",
        "callback_token=env:CB_TEST_KANNEL_TOKEN",
    ]
    environ = {"CB_TEST_KANNEL_PASSWORD": PASSWORD, "CB_TEST_KANNEL_TOKEN": TOKEN}
    before = len(_received(rig))
    with served(
        database_url, tmp_path, port=rig.port, flow=FLOW, provider=provider, environ=environ
    ) as app:
        app.checkout("k1", PHONE)
        _delivered_then_stopped(rig, app, before)


def _delivered_then_stopped(rig: Rig, app: Served, before: int) -> None:
    # sms1 reaches the phone; Kannel's report (dlr-url) marks it delivered.
    wait_until(lambda: len(_texts_to(rig, PHONE, before)) >= 1, WAIT, "sms1 at fakesmsc")
    assert _texts_to(rig, PHONE, before) == [f"DemoShop: your cart is waiting{FOOTER}"]

    def sms1() -> dict[str, object]:
        row = app.sent(PHONE, "sms1")
        assert row is not None
        return row

    wait_until(lambda: sms1()["delivered_at"] is not None, WAIT, "the delivery report")
    assert (sms1()["status"], sms1()["provider"]) == ("delivered", "kannel")

    # `sms1.delivered` now holds, so sms2 goes out as well.
    wait_until(lambda: len(_texts_to(rig, PHONE, before)) >= 2, WAIT, "sms2 at fakesmsc")

    # The shopper types STOP: opted out, and exactly one confirmation reaches the phone.
    rig.kannel.type_mo(PHONE, SENDER, "STOP")
    wait_until(lambda: app.sent(PHONE, "reply.stop") is not None, WAIT, "the confirmation")
    confirmation = app.sent(PHONE, "reply.stop")
    assert confirmation is not None
    wait_until(lambda: len(_texts_to(rig, PHONE, before)) >= 3, WAIT, "it at fakesmsc")
    assert app.contact(PHONE)["opted_out_at"] is not None

    # sms3's time comes: the enrollment ends `opted_out` and nothing more is sent.
    wait_until(lambda: app.enrollment("k1")["exit_reason"] is not None, WAIT, "the exit")
    assert app.enrollment("k1")["exit_reason"] == "opted_out"
    texts = _texts_to(rig, PHONE, before)
    assert texts == [
        f"DemoShop: your cart is waiting{FOOTER}",
        f"DemoShop: still thinking about it?{FOOTER}",
        confirmation["body"],
    ]
    assert [row["step_id"] for row in app.outbox(PHONE)] == ["sms1", "sms2", "reply.stop"]
    decisions = app.decisions("k1")
    assert [d["rule"] for d in decisions if d["outcome"] == "reply"] == ["reply.stop"]
    assert decisions[-1]["outcome"] == "exit" and "opted out" in decisions[-1]["reason"]
