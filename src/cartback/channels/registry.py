"""Build the configured channel for each kind of message."""

from __future__ import annotations

from cartback.channels.dev import ConsoleChannel, JsonlChannel, NullChannel
from cartback.channels.webhook import WebhookChannel
from cartback.config import Settings
from cartback.core.model import Channel
from cartback.ports import MessageChannel


def build_channel(name: str, kind: Channel, settings: Settings) -> MessageChannel:
    if name == "console":
        return ConsoleChannel(kind)
    if name == "jsonl":
        return JsonlChannel(kind, settings.jsonl_path)
    if name == "null":
        return NullChannel(kind)
    if name == "webhook":
        url = settings.sms_webhook_url if kind is Channel.SMS else settings.email_webhook_url
        if url is None:
            raise ValueError(f"the webhook channel for {kind} needs a URL")
        return WebhookChannel(kind, url, timeout=settings.send_timeout_seconds)
    raise ValueError(f"unknown channel {name!r}")


def build_channels(settings: Settings) -> dict[Channel, MessageChannel]:
    return {
        Channel.SMS: build_channel(settings.sms_channel, Channel.SMS, settings),
        Channel.EMAIL: build_channel(settings.email_channel, Channel.EMAIL, settings),
    }
