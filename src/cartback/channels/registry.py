"""Build the configured channel for each kind of message.

`build_channel` builds the global channels (`CARTBACK_SMS_CHANNEL`, `CARTBACK_EMAIL_CHANNEL`),
the default for stores without a provider of their own. `PROVIDERS` names the real providers a
store can choose (`cartback channels set`): each factory takes the store's `ProviderConfig`,
secrets resolved, and returns a `ProviderChannel`.
"""

from __future__ import annotations

from collections.abc import Callable

from cartback.channels import postmark, smtp
from cartback.channels.dev import ConsoleChannel, JsonlChannel, NullChannel
from cartback.channels.failover import CircuitBreaker, FailoverChannel
from cartback.channels.inmobile import InMobileChannel
from cartback.channels.kannel import KannelChannel
from cartback.channels.linkmobility import LinkMobilityChannel
from cartback.channels.sinch import SinchChannel
from cartback.channels.smpp import SmppChannel
from cartback.channels.twilio import TwilioChannel
from cartback.channels.vonage import VonageChannel
from cartback.channels.webhook import WebhookChannel
from cartback.config import Settings, smtp_options
from cartback.core.model import Channel
from cartback.ports import MessageChannel, ProviderChannel, ProviderConfig

# Every real provider by the name used in store settings and in the callback routes
# (`/hooks/channel/{provider}/{store}/...`). One line per provider.
PROVIDERS: dict[str, Callable[[ProviderConfig], ProviderChannel]] = {
    "twilio": TwilioChannel,
    "vonage": VonageChannel,
    "linkmobility": LinkMobilityChannel,
    "inmobile": InMobileChannel,
    "sinch": SinchChannel,
    "smtp": smtp.build,
    "postmark": postmark.build,
    "kannel": KannelChannel,
    # Receipts and replies arrive on the bind: drain `SmppChannel.events` (docs/providers.md).
    "smpp": SmppChannel,
}


def build_provider(config: ProviderConfig) -> ProviderChannel:
    """The provider a store's settings name; ValueError for a name cartback does not know."""
    try:
        factory = PROVIDERS[config.provider]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {config.provider!r}; one of {known}") from None
    return factory(config)


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
    if name == "smtp" and kind is Channel.EMAIL:
        # The installation-wide SMTP server from CARTBACK_SMTP_*, for every store.
        config = ProviderConfig(
            provider="smtp",
            kind=kind,
            store="",
            options=smtp_options(settings),
            status_url="",
            inbound_url="",
            timeout=timeout,
        )
        return smtp.build(config)
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
