"""Build the configured channel for each kind of message."""

from __future__ import annotations

from collections.abc import Callable

from cartback.channels.dev import ConsoleChannel, JsonlChannel, NullChannel
from cartback.channels.kannel import KannelChannel
from cartback.channels.smpp import SmppChannel
from cartback.channels.webhook import WebhookChannel
from cartback.config import Settings
from cartback.core.model import Channel
from cartback.ports import MessageChannel, ProviderChannel, ProviderConfig

# Real providers, each built from one store's settings for it.
PROVIDERS: dict[str, Callable[[ProviderConfig], ProviderChannel]] = {
    "kannel": KannelChannel,
    # Receipts and replies arrive on the bind: drain `SmppChannel.events` (see docs/providers.md).
    "smpp": SmppChannel,
}


def build_channel(name: str, kind: Channel, settings: Settings) -> MessageChannel:
    # Every channel gets the provider timeout: the dispatcher's lease assumes no call outlives it.
    timeout = settings.send_timeout_seconds
    if name == "console":
        return ConsoleChannel(kind, timeout=timeout)
    if name == "jsonl":
        return JsonlChannel(kind, settings.jsonl_path, timeout=timeout)
    if name == "null":
        return NullChannel(kind, timeout=timeout)
    if name == "webhook":
        url = settings.sms_webhook_url if kind is Channel.SMS else settings.email_webhook_url
        if url is None:
            raise ValueError(f"the webhook channel for {kind} needs a URL")
        return WebhookChannel(kind, url, timeout=timeout)
    raise ValueError(f"unknown channel {name!r}")


def build_channels(settings: Settings) -> dict[Channel, MessageChannel]:
    return {
        Channel.SMS: build_channel(settings.sms_channel, Channel.SMS, settings),
        Channel.EMAIL: build_channel(settings.email_channel, Channel.EMAIL, settings),
    }
