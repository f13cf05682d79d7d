"""Build the configured channel for each kind of message.

`build_channel` builds the global channels (`CARTBACK_SMS_CHANNEL`, `CARTBACK_EMAIL_CHANNEL`),
the default for stores without a provider of their own. `PROVIDERS` names the real providers a
store can choose (`cartback channels set`): each factory takes the store's `ProviderConfig`,
secrets resolved, and returns a `ProviderChannel`.
"""

from __future__ import annotations

from collections.abc import Callable

from cartback.channels.dev import ConsoleChannel, JsonlChannel, NullChannel
from cartback.channels.twilio import TwilioChannel
from cartback.channels.webhook import WebhookChannel
from cartback.config import Settings
from cartback.core.model import Channel
from cartback.ports import MessageChannel, ProviderChannel, ProviderConfig

PROVIDERS: dict[str, Callable[[ProviderConfig], ProviderChannel]] = {
    "twilio": TwilioChannel,
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
