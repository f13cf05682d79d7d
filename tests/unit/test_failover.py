"""Failover: the breaker's states, what counts as a failure, and never a second provider for a
message the first may have taken."""

from __future__ import annotations

import pytest

from cartback.channels.failover import BreakerState, CircuitBreaker, FailoverChannel
from cartback.channels.registry import build_channels
from cartback.config import ConfigError, load_settings
from cartback.core.model import Channel
from cartback.ports import LookupResult, LookupStatus, OutboundMessage, SendResult, SendStatus

DOWN = SendResult(SendStatus.REJECTED, error="connect error", retryable=True)
TIMED_OUT = SendResult(SendStatus.UNKNOWN, error="read timeout")
INVALID = SendResult(SendStatus.REJECTED, error="invalid number", error_code="21211")


class Scripted:
    """A provider answering from a list (the last answer repeats), counting its calls."""

    def __init__(
        self,
        name: str,
        *answers: SendResult | Exception,
        found: LookupStatus = LookupStatus.UNKNOWN,
    ) -> None:
        self.name = name
        self.kind = Channel.SMS
        self.answers = list(answers) or [SendResult(SendStatus.ACCEPTED, provider_id=f"{name}-1")]
        self.calls: list[str] = []
        self.found = found
        self.closed = False

    def send(self, message: OutboundMessage) -> SendResult:
        self.calls.append(message.key)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def lookup(self, key: str) -> LookupStatus:
        return self.found

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _message(n: int) -> OutboundMessage:
    return OutboundMessage(key=f"cb-{n}", channel=Channel.SMS, to="+4790000000", body="hi")


def _failover(
    primary: Scripted, secondary: Scripted, clock: Clock | None = None, **kw: float
) -> FailoverChannel:
    breaker = CircuitBreaker(
        failures=int(kw.get("failures", 3)),
        window=kw.get("window", 60),
        cool_down=kw.get("cool_down", 30),
        clock=clock or Clock(),
    )
    return FailoverChannel(primary, secondary, breaker)  # type: ignore[arg-type]


def test_a_refusal_that_proves_nothing_went_out_goes_to_the_secondary_at_once() -> None:
    primary, secondary = Scripted("a", DOWN), Scripted("b")
    channel = _failover(primary, secondary)
    result = channel.send(_message(1))
    assert (result.status, result.provider, result.provider_id) == ("accepted", "b", "b-1")
    assert primary.calls == secondary.calls == ["cb-1"]


def test_after_n_failures_the_circuit_opens_then_half_opens_then_closes() -> None:
    clock = Clock()
    primary = Scripted("a", DOWN, DOWN, DOWN, SendResult(SendStatus.ACCEPTED, provider_id="a-9"))
    secondary = Scripted("b")
    channel = _failover(primary, secondary, clock, failures=3, cool_down=30)
    for n in range(3):
        channel.send(_message(n))
    assert channel.breaker.state is BreakerState.OPEN
    for n in range(3, 6):
        assert channel.send(_message(n)).provider == "b"
    assert len(primary.calls) == 3  # open: the primary is not called
    clock.now += 30
    assert channel.breaker.state is BreakerState.HALF_OPEN
    assert channel.breaker.allows() and not channel.breaker.allows()  # one trial at a time
    channel.breaker.undecided()
    result = channel.send(_message(7))
    assert (result.provider, result.provider_id) == ("a", "a-9")
    assert channel.breaker.state is BreakerState.CLOSED
    assert channel.send(_message(8)).provider == "a"


def test_a_failed_trial_opens_the_circuit_again() -> None:
    clock = Clock()
    channel = _failover(Scripted("a", DOWN), Scripted("b"), clock, failures=2, cool_down=10)
    channel.send(_message(1))
    channel.send(_message(2))
    clock.now += 10
    channel.send(_message(3))  # the trial fails
    assert channel.breaker.state is BreakerState.OPEN
    clock.now += 9
    assert channel.breaker.state is BreakerState.OPEN


def test_failures_within_the_window_open_it_even_with_successes_between() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, window=10, cool_down=5, clock=clock)
    for _ in range(2):
        breaker.failed()
        breaker.succeeded()
        clock.now += 4
    assert breaker.state is BreakerState.CLOSED
    breaker.failed()  # the third within 10 s, none of them in a row
    assert breaker.state is BreakerState.OPEN


def test_failures_spread_beyond_the_window_do_not_open_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, window=10, clock=clock)
    for _ in range(5):
        breaker.failed()
        breaker.succeeded()
        clock.now += 6
    assert breaker.state is BreakerState.CLOSED


def test_an_unknown_answer_is_never_retried_on_the_secondary_nor_counted() -> None:
    primary, secondary = Scripted("a", TIMED_OUT), Scripted("b")
    channel = _failover(primary, secondary, failures=1)
    for n in range(5):
        result = channel.send(_message(n))
        assert (result.status, result.provider) == ("unknown", "a")
    assert secondary.calls == []
    assert channel.breaker.state is BreakerState.CLOSED


def test_a_channel_that_raises_is_unknown_and_not_failed_over() -> None:
    primary, secondary = Scripted("a", ConnectionResetError("mid-request")), Scripted("b")
    channel = _failover(primary, secondary, failures=1)
    result = channel.send(_message(1))
    assert result.status is SendStatus.UNKNOWN and "ConnectionResetError" in str(result.error)
    assert secondary.calls == []


def test_a_permanent_refusal_stays_with_the_primary_and_keeps_it_closed() -> None:
    primary, secondary = Scripted("a", INVALID), Scripted("b")
    channel = _failover(primary, secondary, failures=1)
    for n in range(3):
        result = channel.send(_message(n))
        assert (result.status, result.error_code, result.provider) == ("rejected", "21211", "a")
    assert secondary.calls == []
    assert channel.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("primary", "secondary", "expected"),
    [
        (LookupStatus.SENT, LookupStatus.NOT_SENT, LookupStatus.SENT),
        (LookupStatus.NOT_SENT, LookupStatus.SENT, LookupStatus.SENT),
        (LookupStatus.NOT_SENT, LookupStatus.NOT_SENT, LookupStatus.NOT_SENT),
        (LookupStatus.NOT_SENT, LookupStatus.UNKNOWN, LookupStatus.UNKNOWN),
        (LookupStatus.UNKNOWN, LookupStatus.NOT_SENT, LookupStatus.UNKNOWN),
    ],
)
def test_a_lookup_after_a_crash_asks_both_providers(
    primary: LookupStatus, secondary: LookupStatus, expected: LookupStatus
) -> None:
    channel = _failover(Scripted("a", found=primary), Scripted("b", found=secondary))
    found = channel.lookup("cb-1")
    assert isinstance(found, LookupResult) and found.status is expected


def test_the_settings_wrap_the_primary_with_its_secondary() -> None:
    settings = load_settings(
        {},
        sms_channel="null",
        email_channel="null",
        sms_failover_channel="webhook",
        sms_failover_webhook_url="http://127.0.0.1:9/sms",
        failover_failures=4,
    )
    channels = build_channels(settings)
    sms = channels[Channel.SMS]
    assert isinstance(sms, FailoverChannel)
    assert (sms.primary.name, sms.secondary.name, sms.breaker.failures) == ("null", "webhook", 4)
    assert not isinstance(channels[Channel.EMAIL], FailoverChannel)
    for channel in channels.values():
        channel.close()
    with pytest.raises(ConfigError, match="CARTBACK_SMS_FAILOVER_WEBHOOK_URL"):
        load_settings({}, sms_failover_channel="webhook")
    with pytest.raises(ConfigError, match="CARTBACK_EMAIL_FAILOVER_CHANNEL"):
        load_settings({}, email_failover_channel="carrier-pigeon")
