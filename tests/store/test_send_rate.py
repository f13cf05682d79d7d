"""The send rate per provider account and sender holds across workers: a `send_rates` row."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from cartback.config import ConfigError, load_settings
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, SendResult
from cartback.services.dispatch import Dispatcher
from cartback.services.sendrate import (
    RateUnit,
    SharedBucket,
    bucket_key,
    shared_rates,
    within_grant,
)
from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.store.test_dispatch import Recorder, _due_messages, _rows
from tests.support.world import World


class TimedRecorder(Recorder):
    """Remembers when (monotonic seconds) each message reached it."""

    def __init__(self) -> None:
        super().__init__(Channel.SMS)
        self.times: list[float] = []

    def send(self, message: OutboundMessage) -> SendResult:
        with self.lock:
            self.times.append(time.monotonic())
        return super().send(message)


def _engines(world: World, count: int) -> list[Engine]:
    url = world.app.engine.url.render_as_string(hide_password=False)
    return [make_engine(url) for _ in range(count)]


def test_two_workers_share_one_bucket(world: World) -> None:
    engines = _engines(world, 2)
    try:
        a, b = (SharedBucket(engine, "sms:acct", "+4790000000", 10) for engine in engines)
        now = world.now
        assert a.reserve(now, 7) == 7
        assert b.reserve(now, 7) == 3  # one second's burst, shared
        assert a.reserve(now, 7) == 0
        assert b.reserve(now + timedelta(milliseconds=500), 100) == 5
        b.settle(5, 2)  # three unused go back
        assert a.reserve(now + timedelta(milliseconds=500), 100) == 3
        # A worker whose clock is behind adds nothing and does not move the count back.
        assert a.reserve(now, 100) == 0
        assert b.reserve(now + timedelta(seconds=60), 100) == 10  # never more than the burst
        # Another sender of the same account has its own bucket.
        other = SharedBucket(engines[0], "sms:acct", "SHOP", 10)
        assert other.reserve(now, 100) == 10
    finally:
        for engine in engines:
            engine.dispose()


def test_a_long_message_beyond_the_grant_is_charged_as_debt(world: World) -> None:
    bucket = SharedBucket(world.app.engine, "sms:acct", "default", 2, unit=RateUnit.SEGMENTS)
    now = world.now
    assert bucket.reserve(now, 10) == 2
    bucket.settle(2, 5)  # a 5-segment message went out on a 2-token grant
    assert bucket.reserve(now + timedelta(seconds=1), 10) == 0  # 3 owed, 2 refilled
    assert bucket.reserve(now + timedelta(seconds=2), 10) == 1
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.send_rates.c.sender)).scalars().all() == ["default"]


def test_a_rate_in_segments_claims_the_rows_that_fit() -> None:
    rows = [
        {"id": 1, "channel": "sms", "segments": 3},
        {"id": 2, "channel": "sms", "segments": 2},
        {"id": 3, "channel": "email", "segments": None},
        {"id": 4, "channel": "sms", "segments": 1},
        {"id": 5, "channel": "sms", "segments": None},
    ]
    used: dict[Channel, int] = {}
    kept = within_grant(rows, {Channel.SMS: 4}, {Channel.SMS: RateUnit.SEGMENTS}, used)
    assert [row["id"] for row in kept] == [1, 3, 4]
    assert used == {Channel.SMS: 4}
    used = {}
    kept = within_grant(rows, {Channel.SMS: 2}, {Channel.SMS: RateUnit.SEGMENTS}, used)
    assert [row["id"] for row in kept] == [1, 3]  # the first always fits, as debt
    assert used == {Channel.SMS: 3}
    used = {}
    kept = within_grant(rows, {Channel.SMS: 2}, {Channel.SMS: RateUnit.MESSAGES}, used)
    assert [row["id"] for row in kept] == [1, 2, 3]


def test_the_worker_keys_each_bucket_by_account_and_sender(world: World) -> None:
    settings = load_settings({}, sms_rate=50.0, sms_rate_unit="segments")
    texts, mails = Recorder(Channel.SMS), Recorder(Channel.EMAIL)
    texts.sender = "SHOP"  # type: ignore[attr-defined]
    buckets = shared_rates(world.app.engine, {Channel.SMS: texts, Channel.EMAIL: mails}, settings)
    assert list(buckets) == [Channel.SMS]  # email has no rate
    sms = buckets[Channel.SMS]
    assert isinstance(sms, SharedBucket)
    assert (sms.account, sms.sender, sms.rate, sms.unit) == ("sms:recorder", "SHOP", 50, "segments")
    assert bucket_key(mails) == ("email:recorder", "default")
    with pytest.raises(ConfigError, match="CARTBACK_SMS_RATE_UNIT"):
        load_settings({"CARTBACK_SMS_RATE_UNIT": "bytes"})


def _clock_from(start: datetime) -> Callable[[], datetime]:
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


def test_two_dispatchers_hold_50_a_second_together_not_100(world: World) -> None:
    rate, seconds = 50, 4.0
    # Enough for two workers each sending the whole rate, so a per-worker limit would show.
    _due_messages(world, carts=int(2 * rate * (seconds + 2)))
    providers = [TimedRecorder(), TimedRecorder()]
    clock = _clock_from(world.now)  # the test world's time, moving with real time
    engines = _engines(world, 2)
    dispatchers = [
        Dispatcher(
            engine,
            {Channel.SMS: providers[i]},
            owner=f"w{i}",
            clock=clock,
            rates={Channel.SMS: SharedBucket(engine, "sms:acct", "default", rate)},
        )
        for i, engine in enumerate(engines)
    ]
    start = time.monotonic()
    stop = threading.Event()

    def work(dispatcher: Dispatcher) -> None:
        while not stop.is_set():
            if not dispatcher.run_once(clock()).claimed:
                time.sleep(0.005)

    threads = [threading.Thread(target=work, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    time.sleep(seconds + 1)
    stop.set()
    for thread in threads:
        thread.join()
    for dispatcher, engine in zip(dispatchers, engines, strict=True):
        dispatcher.close()
        engine.dispose()
    times = providers[0].times + providers[1].times
    sent_keys = [m.key for provider in providers for m in provider.sent]
    # After the first second's burst, the steady rate of the two together.
    steady = [at for at in times if start + 1 <= at < start + 1 + seconds]
    achieved = len(steady) / seconds
    assert rate * 0.9 <= achieved <= rate * 1.1, achieved
    assert len(sent_keys) <= rate * (seconds + 1) * 1.1 + rate  # burst included
    sent = [row for row in _rows(world) if row["status"] == "sent"]
    assert len(sent) == len(sent_keys) == len(set(sent_keys))
    # Both workers sent: the limit is shared between them, not one worker's alone.
    assert all(len(provider.sent) > rate / 4 for provider in providers)
