"""The Kannel channel's requests and answers, and its reading of Kannel's callbacks."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from cartback.channels.kannel import KannelChannel
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, ProviderConfig, SendStatus, WebhookRequest

OPTIONS = {
    "sendsms_url": "http://kannel.test:13013/cgi-bin/sendsms",
    "username": "shop",
    "password": "s3cret",
    "callback_token": "tok-123",
    "from": "Shop",
    "smsc": "link1",
}


def _channel(
    handler: httpx.MockTransport | None = None, **options: str
) -> tuple[KannelChannel, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    config = ProviderConfig(
        provider="kannel",
        kind=Channel.SMS,
        store="demo",
        options={**OPTIONS, **options},
        status_url="https://cb.example/hooks/channel/kannel/demo/status",
        inbound_url="https://cb.example/hooks/channel/kannel/demo/inbound",
        timeout=3.0,
    )
    return KannelChannel(config, transport=handler or httpx.MockTransport(answer)), seen


def _message(body: str, key: str = "cb-7") -> OutboundMessage:
    return OutboundMessage(key=key, channel=Channel.SMS, to="+4791234567", body=body)


def _params(request: httpx.Request) -> dict[str, list[bytes]]:
    query = urlsplit(str(request.url)).query
    return {
        k: [v.encode("latin-1") for v in vs]
        for k, vs in parse_qs(query, encoding="latin-1", keep_blank_values=True).items()
    }


def test_gsm_text_goes_as_coding_0_with_the_key_and_token_in_the_dlr_url() -> None:
    channel, seen = _channel()
    result = channel.send(_message("Hello {there}"))
    assert result.status is SendStatus.ACCEPTED
    assert result.segments == 1
    params = _params(seen[0])
    assert params["coding"] == [b"0"] and params["charset"] == [b"UTF-8"]
    assert params["text"] == [b"Hello {there}"]
    assert params["from"] == [b"Shop"] and params["smsc"] == [b"link1"]
    assert params["dlr-mask"] == [b"31"]
    dlr_url = params["dlr-url"][0].decode()
    assert dlr_url.startswith("https://cb.example/hooks/channel/kannel/demo/status?")
    dlr_query = dict(part.split("=", 1) for part in urlsplit(dlr_url).query.split("&"))
    assert dlr_query["key"] == "cb-7" and dlr_query["token"] == "tok-123"
    assert dlr_query["status"] == "%d" and dlr_query["at"] == "%T"
    assert dlr_query["reply"] == "%A"


def test_non_gsm_text_goes_as_utf16be_ucs2_and_counts_its_segments() -> None:
    channel, seen = _channel()
    text = "Привет " * 12  # 84 UTF-16 units: two UCS-2 parts
    result = channel.send(_message(text))
    params = _params(seen[0])
    assert params["coding"] == [b"2"] and params["charset"] == [b"UTF-16BE"]
    assert params["text"] == [text.encode("utf-16-be")]
    assert result.segments == 2


def test_a_long_gsm_text_reports_its_parts() -> None:
    channel, _ = _channel()
    assert channel.send(_message("x" * 200)).segments == 2


def test_the_message_sender_overrides_the_configured_one() -> None:
    channel, seen = _channel()
    channel.send(
        OutboundMessage(key="cb-1", channel=Channel.SMS, to="+4791234567", body="hi", sender="X")
    )
    assert _params(seen[0])["from"] == [b"X"]


@pytest.mark.parametrize(
    ("status", "text", "outcome", "retryable"),
    [
        (202, "3: Queued for later delivery", SendStatus.ACCEPTED, False),
        (403, "Authorization failed for sendsms", SendStatus.REJECTED, False),
        (400, "Missing receiver number", SendStatus.REJECTED, False),
        (503, "Temporal failure, try again later.", SendStatus.REJECTED, True),
        (202, "4: Something unexpected", SendStatus.REJECTED, False),
    ],
)
def test_kannel_answers(status: int, text: str, outcome: SendStatus, retryable: bool) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text=text))
    channel, _ = _channel(transport)
    result = channel.send(_message("hi"))
    assert result.status is outcome
    assert result.retryable is retryable


def test_a_refused_connection_is_retryable_and_a_timeout_unknown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    refused = _channel(httpx.MockTransport(refuse))[0].send(_message("hi"))
    assert (refused.status, refused.retryable) == (SendStatus.REJECTED, True)
    timed_out = _channel(httpx.MockTransport(hang))[0].send(_message("hi"))
    assert timed_out.status is SendStatus.UNKNOWN
    # The URL carries the password: no error text may repeat it.
    assert "s3cret" not in (refused.error or "") + (timed_out.error or "")


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="callback_token"):
        _channel(callback_token="")
    with pytest.raises(ValueError, match="callback_token"):
        _channel(callback_token="has%escape")
    with pytest.raises(ValueError, match="dlr_mask"):
        _channel(dlr_mask="all")


def _dlr(**query: str) -> WebhookRequest:
    return WebhookRequest(
        method="GET", url="https://cb.example/x", headers={}, body=b"", query=query
    )


def test_verify_compares_the_token() -> None:
    channel, _ = _channel()
    assert channel.verify(_dlr(token="tok-123"))
    assert not channel.verify(_dlr(token="tok-124"))
    assert not channel.verify(_dlr())


@pytest.mark.parametrize(
    ("dlr_type", "status", "error_code"),
    [
        ("1", DeliveryStatus.DELIVERED, None),
        ("2", DeliveryStatus.FAILED, "2"),
        ("4", DeliveryStatus.SENT, None),
        ("8", DeliveryStatus.SENT, None),
        ("16", DeliveryStatus.FAILED, "16"),
    ],
)
def test_dlr_types_map_to_delivery_updates(
    dlr_type: str, status: DeliveryStatus, error_code: str | None
) -> None:
    channel, _ = _channel()
    [update] = channel.parse_status(
        _dlr(key="cb-9", token="tok-123", status=dlr_type, at="1767225600", fid="abc")
    )
    assert update.status is status
    assert update.message_key == "cb-9" and update.provider_id == "abc"
    assert update.at == datetime(2026, 1, 1, tzinfo=UTC)
    assert update.error_code == error_code
    assert "token" not in update.raw


def test_a_failed_report_keeps_the_carriers_error_code() -> None:
    channel, _ = _channel()
    reply = "id:42 sub:001 dlvrd:000 submit date:2601010000 stat:UNDELIV err:034 text:"
    [update] = channel.parse_status(_dlr(key="cb-9", status="2", reply=reply))
    assert (update.status, update.error_code) == (DeliveryStatus.FAILED, "034")


def test_reports_that_are_unknown_or_malformed() -> None:
    channel, _ = _channel()
    assert channel.parse_status(_dlr(key="cb-9", status="32")) == []
    with pytest.raises(ValueError, match="status"):
        channel.parse_status(_dlr(key="cb-9"))
    with pytest.raises(ValueError, match="status"):
        channel.parse_status(_dlr(key="cb-9", status="delivered"))
    with pytest.raises(ValueError, match="key"):
        channel.parse_status(_dlr(status="1"))


def test_a_ucs2_reply_posted_as_utf16be_is_decoded_by_its_charset() -> None:
    channel, _ = _channel()
    request = WebhookRequest(
        method="POST",
        url="https://cb.example/x",
        headers={
            "content-type": 'text/plain; charset="UTF-16BE"',
            "x-kannel-from": "004791234567",
            "x-kannel-to": "12345",
            "x-kannel-time": "2026-01-01 10:00:00",
        },
        body="Стоп".encode("utf-16-be"),
        query={"token": "tok-123"},
    )
    [reply] = channel.parse_inbound(request)
    assert (reply.sender, reply.text, reply.to) == ("+4791234567", "Стоп", "12345")
    assert reply.at == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_a_get_url_reply_reads_the_text_parameter() -> None:
    channel, _ = _channel()
    [reply] = channel.parse_inbound(_dlr(token="tok-123", text="stop", **{"from": "+4712345678"}))
    assert (reply.sender, reply.text) == ("+4712345678", "stop")
    with pytest.raises(ValueError, match="from"):
        channel.parse_inbound(_dlr(token="tok-123", text="stop"))


def test_the_mo_url_carries_the_token_and_kannel_escapes() -> None:
    channel, _ = _channel()
    assert channel.mo_url() == (
        "https://cb.example/hooks/channel/kannel/demo/inbound"
        "?token=tok-123&from=%p&to=%P&at=%T&id=%I"
    )
