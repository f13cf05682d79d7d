"""Build the configured channel for each kind of message."""

from __future__ import annotations

from cartback.channels.dev import ConsoleChannel, JsonlChannel, NullChannel
from cartback.channels.failover import CircuitBreaker, FailoverChannel
from cartback.channels.webhook import WebhookChannel
from cartback.config import Settings
from cartback.core.model import Channel
from cartback.ports import MessageChannel


def build_channel(
    name: str, kind: Channel, settings: Settings, *, url: str | None = None
) -> MessageChannel:
    # Every channel gets the provider timeout: the dispatcher's lease assumes no call outlives it.
    timeout = settings.send_timeout_seconds
    if name == "console":
        return ConsoleChannel(kind, timeout=timeout)
    if name == "jsonl":
        return JsonlChannel(kind, settings.jsonl_path, timeout=timeout)
    if name == "null":
        return NullChannel(kind, timeout=timeout)
    if name == "webhook":
        if url is None:
            url = settings.sms_webhook_url if kind is Channel.SMS else settings.email_webhook_url
        if url is None:
            raise ValueError(f"the webhook channel for {kind} needs a URL")
        return WebhookChannel(kind, url, timeout=timeout)
    raise ValueError(f"unknown channel {name!r}")


def build_channels(settings: Settings) -> dict[Channel, MessageChannel]:
    channels = {
        Channel.SMS: build_channel(settings.sms_channel, Channel.SMS, settings),
        Channel.EMAIL: build_channel(settings.email_channel, Channel.EMAIL, settings),
    }
    return {kind: with_failover(channel, settings) for kind, channel in channels.items()}


def with_failover(primary: MessageChannel, settings: Settings) -> MessageChannel:
    """The primary behind a circuit breaker, with the configured secondary for its kind."""
    sms = primary.kind is Channel.SMS
    name = settings.sms_failover_channel if sms else settings.email_failover_channel
    if name is None:
        return primary
    url = settings.sms_failover_webhook_url if sms else settings.email_failover_webhook_url
    secondary = build_channel(name, primary.kind, settings, url=url)
    breaker = CircuitBreaker(
        failures=settings.failover_failures,
        window=settings.failover_window_seconds,
        cool_down=settings.failover_cooldown_seconds,
    )
    return FailoverChannel(primary, secondary, breaker)
