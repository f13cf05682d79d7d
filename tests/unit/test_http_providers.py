"""What every SaaS SMS adapter does the same way: the registry, transport failures, missing
options and the callback token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.recorded import callback, failing, provider_config

from cartback.channels.http import TOKEN_PARAM, with_token
from cartback.channels.inmobile import InMobileChannel
from cartback.channels.linkmobility import LinkMobilityChannel
from cartback.channels.registry import PROVIDERS, build_provider
from cartback.channels.sinch import SinchChannel
from cartback.channels.vonage import VonageChannel
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, ProviderChannel, ProviderConfig, SendStatus

NAMES = ["vonage", "linkmobility", "inmobile", "sinch"]
ADAPTERS: dict[str, Any] = {
    "vonage": VonageChannel,
    "linkmobility": LinkMobilityChannel,
    "inmobile": InMobileChannel,
    "sinch": SinchChannel,
}
MESSAGE = OutboundMessage(key="cb-42", channel=Channel.SMS, to="+4740000001", body="Hi")
# One recorded callback per provider, to check the token on.
A_CALLBACK = {
    "vonage": "receipt_expired",
    "linkmobility": "report_delivered",
    "inmobile": "status_delivered",
    "sinch": "report_delivered",
}


def _adapter(name: str, transport: httpx.BaseTransport, **options: str | None) -> ProviderChannel:
    channel: ProviderChannel = ADAPTERS[name](provider_config(name, **options), transport)
    return channel


@pytest.mark.parametrize("name", NAMES)
def test_registry_builds_each_provider_by_name(name: str) -> None:
    channel = build_provider(provider_config(name))
    assert isinstance(channel, ADAPTERS[name]) and PROVIDERS[name] is ADAPTERS[name]
    assert channel.name == name and channel.kind is Channel.SMS
    channel.close()


def test_an_unknown_provider_is_named() -> None:
    with pytest.raises(ValueError, match="'carrier-pigeon'"):
        build_provider(ProviderConfig("carrier-pigeon", Channel.SMS, "demo", {}, "", ""))


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("vonage", "api_key"),
        ("vonage", "api_secret"),
        ("linkmobility", "platform_id"),
        ("linkmobility", "gate_id"),
        ("linkmobility", "password"),
        ("inmobile", "api_key"),
        ("sinch", "service_plan_id"),
        ("sinch", "api_token"),
    ],
)
def test_a_missing_option_is_named(name: str, option: str) -> None:
    with pytest.raises(ValueError, match=f"'{option}'"):
        build_provider(provider_config(name, **{option: None}))


# A timeout after the request went out may have sent it: unknown, never blindly retried. A
# refused connection sent nothing: rejected, and safe to retry.
TRANSPORT_FAILURES = [
    pytest.param(httpx.ReadTimeout, SendStatus.UNKNOWN, False, id="read-timeout"),
    pytest.param(httpx.WriteTimeout, SendStatus.UNKNOWN, False, id="write-timeout"),
    pytest.param(httpx.RemoteProtocolError, SendStatus.UNKNOWN, False, id="dropped"),
    pytest.param(httpx.ConnectError, SendStatus.REJECTED, True, id="connect-error"),
    pytest.param(httpx.ConnectTimeout, SendStatus.REJECTED, True, id="connect-timeout"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("error", "status", "retryable"), TRANSPORT_FAILURES)
def test_a_transport_failure_maps_to_what_may_have_been_sent(
    name: str, error: type[httpx.TransportError], status: SendStatus, retryable: bool
) -> None:
    channel = _adapter(name, failing(lambda request: error("failed", request=request)))

    result = channel.send(MESSAGE)

    assert result.status is status
    assert result.retryable is retryable and not result.opted_out


@pytest.mark.parametrize("name", NAMES)
def test_without_a_sender_nothing_is_sent(name: str) -> None:
    transport = failing(lambda request: AssertionError("no request expected"))
    channel = _adapter(name, transport, **{"from": None})

    result = channel.send(MESSAGE)

    assert result.status is SendStatus.REJECTED and not result.retryable


@pytest.mark.parametrize("name", NAMES)
def test_the_callback_token_must_match_when_configured(name: str) -> None:
    channel = build_provider(provider_config(name, callback_token="s3cret"))
    fixture = A_CALLBACK[name]

    assert channel.verify(callback(name, fixture, query={TOKEN_PARAM: "s3cret"}))
    assert not channel.verify(callback(name, fixture, query={TOKEN_PARAM: "guess"}))
    assert not channel.verify(callback(name, fixture))


def test_the_token_joins_an_existing_query() -> None:
    assert with_token("https://x.test/s?a=1", "t") == f"https://x.test/s?a=1&{TOKEN_PARAM}=t"
    assert with_token("https://x.test/s", None) == "https://x.test/s"
