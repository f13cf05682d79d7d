"""A store sending over SMPP 3.4 to the SMSC simulator, from a running `cartback serve`: the
worker keeps the bind, its drain applies the receipts that arrive on it (DELIVRD ->
`delivered_at`, UNDELIV -> `failed_at` and the error code) and an MO "STOP" opts the shopper
out, with one confirmation submitted over the same bind."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.faultrig import daytime_number
from tests.support.kannel import wait_until
from tests.support.procs import free_port
from tests.support.served import WAIT, Served, flow_with_steps, served
from tests.support.smsc import SmscSimulator

# Numbers whose zone is in daytime now: the texts must not wait for the morning.
DELIVERED = daytime_number(datetime.now(UTC), 1)
UNDELIVERED = daytime_number(datetime.now(UTC), 10)  # the simulator fails numbers ending in 0
FLOW = flow_with_steps(
    """\
  - id: sms1
    at: 1s
    channel: sms
    when: contact.sms_consent
    body: '{{ brand }}: your cart is waiting'
  - id: sms2
    at: 8s
    channel: sms
    body: '{{ brand }}: last call for your cart'
"""
)


@pytest.fixture
def smsc() -> Iterator[SmscSimulator]:
    simulator = SmscSimulator()
    simulator.start()
    yield simulator
    simulator.stop()


def test_smpp_receipts_and_a_stop_reach_the_database(
    smsc: SmscSimulator, database_url: str, tmp_path: Path
) -> None:
    provider = [
        "smpp",
        "--option",
        "host=127.0.0.1",
        "--option",
        f"port={smsc.port}",
        "--option",
        "system_id=cartback",
        "--option",
        "from=Shop",
        "--secret",
        "password=env:CB_TEST_SMPP_PASSWORD",
    ]
    with served(
        database_url,
        tmp_path,
        port=free_port(),
        flow=FLOW,
        provider=provider,
        environ={"CB_TEST_SMPP_PASSWORD": "secret"},
    ) as app:
        # The worker binds before it has anything to send: receipts and replies need the bind.
        wait_until(lambda: smsc.bound_sessions() == 1, WAIT, "the worker's bind")
        app.checkout("s1", DELIVERED)
        app.checkout("s2", UNDELIVERED)
        _receipts_recorded(app)
        _stop_over_smpp(smsc, app)


def _receipts_recorded(app: Served) -> None:
    def settled(phone: str) -> bool:
        row = app.sent(phone, "sms1")
        return row is not None and row["status"] in ("delivered", "failed")

    wait_until(lambda: settled(DELIVERED) and settled(UNDELIVERED), WAIT, "both receipts")
    delivered, undelivered = app.sent(DELIVERED, "sms1"), app.sent(UNDELIVERED, "sms1")
    assert delivered is not None and undelivered is not None
    assert (delivered["status"], delivered["provider"]) == ("delivered", "smpp")
    assert delivered["delivered_at"] is not None and delivered["failed_at"] is None
    assert (undelivered["status"], undelivered["error_code"]) == ("failed", "001")
    assert undelivered["failed_at"] is not None and undelivered["delivered_at"] is None
    assert "UNDELIV" in (undelivered["error"] or "")


def _stop_over_smpp(smsc: SmscSimulator, app: Served) -> None:
    smsc.send_mo(DELIVERED.lstrip("+"), "Shop", b"STOP")
    wait_until(lambda: app.sent(DELIVERED, "reply.stop") is not None, WAIT, "the confirmation")
    assert app.contact(DELIVERED)["opted_out_at"] is not None

    def confirmations() -> list[bytes]:
        return [
            item.short_message
            for item in smsc.submitted
            if item.destination_addr == DELIVERED.lstrip("+")
        ][1:]

    wait_until(lambda: len(confirmations()) >= 1, WAIT, "the confirmation at the SMSC")
    confirmation = app.sent(DELIVERED, "reply.stop")
    assert confirmation is not None
    assert confirmations() == [confirmation["body"].encode()]
    # sms2's time: the opted-out shopper's enrollment ends; the other one's goes on.
    wait_until(lambda: app.enrollment("s1")["exit_reason"] is not None, WAIT, "the exit")
    assert app.enrollment("s1")["exit_reason"] == "opted_out"
    wait_until(lambda: app.sent(UNDELIVERED, "sms2") is not None, WAIT, "sms2 to the other")
    assert [row["step_id"] for row in app.outbox(DELIVERED)] == ["sms1", "reply.stop"]
    assert len(confirmations()) == 1
