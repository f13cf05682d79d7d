"""Logs never carry message bodies, phone numbers or email addresses; ids stay readable."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from cartback import worker as worker_module
from cartback.channels.dev import ConsoleChannel
from cartback.core.model import Channel
from cartback.logs import mask, setup_logging
from cartback.ports import OutboundMessage
from cartback.services.tick import TickStats
from cartback.store import tables as t
from cartback.worker import Worker
from tests.support.world import World

PHONE = "+4791234567"
EMAIL = "kari.nordmann@example.com"
BODY = "Kari, your wool socks are still waiting"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What cartback's own log setup writes, as the long-running commands install it."""
    factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    handler = setup_logging(stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.setLogRecordFactory(factory)


def _poison_insert(engine: Engine, enrollment_id: int) -> None:
    """A write that fails with the shopper's phone, email and message body bound to it."""
    with engine.begin() as conn:
        conn.execute(
            t.outbox.insert().values(
                store_id=1,
                enrollment_id=enrollment_id,
                contact_id=1,
                step_id="sms1",
                channel=None,  # NOT NULL: the database refuses the row and may quote it
                to_address=PHONE,
                subject=EMAIL,
                body=BODY,
                status="pending",
                attempts=0,
                available_at=datetime(2026, 1, 1, tzinfo=UTC),
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                updated_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )


def test_a_failing_timer_batch_logs_no_phone_email_or_body(
    world: World, log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = Worker(world.app)

    def failing_tick(*_args: object, **_kwargs: object) -> TickStats:
        runner.stop.set()
        _poison_insert(world.app.engine, enrollment_id=123456789)
        raise AssertionError("unreachable")

    monkeypatch.setattr(worker_module, "tick", failing_tick)
    thread = threading.Thread(target=runner.run)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    output = log_output.getvalue()
    assert "timer batch failed; retrying" in output
    assert "IntegrityError" in output  # what went wrong ...
    assert "outbox" in output  # ... and where
    for secret in (PHONE, "91234567", EMAIL, "kari.nordmann", BODY, "wool socks"):
        assert secret not in output, output


def test_a_log_line_keeps_ids_and_loses_contact_details(log_output: io.StringIO) -> None:
    log = logging.getLogger("cartback.test")
    log.warning(
        "enrollment_id=%d outbox #12345678 key cb-987654321 to %s / %s: %r",
        123456789,
        PHONE,
        EMAIL,
        BODY,
    )
    line = log_output.getvalue()
    assert "enrollment_id=123456789 outbox #12345678 key cb-987654321" in line
    assert "to <phone> / <email>" in line
    assert PHONE not in line and EMAIL not in line


@pytest.mark.parametrize(
    "phone",
    [
        "+47 912 34 567",
        "+1 (555) 123-4567",
        "0047 91234567",
        "(555) 123-4567",
        "555.123.4567",
        "040 12 345",
        "91234567",
        "0612345678",
    ],
)
def test_phone_numbers_in_common_formats_are_masked(phone: str) -> None:
    assert mask(f"call {phone} now") == "call <phone> now"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23 10:00:00,123 took 12.5 s",
        "outbox 42 attempt 3 of 5",
        "id=123456789",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "version 1.2.3 on 127.0.0.1:8080",
    ],
)
def test_dates_ids_and_versions_are_left_alone(text: str) -> None:
    assert mask(text) == text


def test_database_errors_lose_the_row_values_they_quote() -> None:
    error = (
        'null value in column "channel" of relation "outbox" violates not-null constraint\n'
        f"DETAIL:  Failing row contains (1, 2, null, {PHONE}, Hi there, a body).\n"
        "[SQL: INSERT INTO outbox (...) VALUES (...)]\n"
        f"[parameters: {{'to_address': '{PHONE}', 'body': 'Hi there, a body'}}]"
    )
    masked = mask(error)
    assert "Hi there" not in masked and PHONE not in masked
    assert "DETAIL:  Failing row contains [values hidden]" in masked
    assert "[SQL: INSERT INTO outbox (...) VALUES (...)]" in masked


def test_the_console_channel_prints_messages_but_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    printed: list[str] = []
    channel = ConsoleChannel(Channel.SMS, write=printed.append)
    message = OutboundMessage(key="cb-1", channel=Channel.SMS, to=PHONE, body=BODY)
    with caplog.at_level(logging.DEBUG):
        channel.send(message)
    assert PHONE in printed[0] and BODY in printed[0]  # its output is the message, by design
    assert caplog.records == []
