"""The LINK Mobility SMS REST adapter against recorded exchanges and gate callbacks."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from tests.support.recorded import Replay, callback, provider_config, sent_fields

from cartback.channels.linkmobility import LinkMobilityChannel
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, SendResult, SendStatus

MESSAGE = OutboundMessage(
    key="cb-42", channel=Channel.SMS, to="+4740000001", body="Your cart is waiting"
)


def _send(fixture: str, message: OutboundMessage = MESSAGE) -> tuple[Replay, SendResult]:
    replay = Replay("linkmobility", fixture)
    channel = LinkMobilityChannel(provider_config("linkmobility"), replay.transport)
    return replay, channel.send(message)


def test_sends_the_recorded_request_with_ref_id_and_report_gate() -> None:
    replay, result = _send("send_accepted")
    recorded = replay.exchange["request"]

    assert replay.request.method == recorded["method"]
    assert str(replay.request.url) == recorded["url"]
    assert sent_fields(replay.request) == recorded["json"]
    expected = base64.b64encode(b"link-user:link-pass").decode()
    assert replay.request.headers["authorization"] == f"Basic {expected}"
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "Dk3xYz9QaB7u" and result.segments == 1


def test_a_number_sender_is_sent_as_msisdn() -> None:
    message = OutboundMessage(
        key="cb-1", channel=Channel.SMS, to="+4740000001", body="x", sender="+4759000000"
    )
    replay, _ = _send("send_accepted", message)
    assert sent_fields(replay.request)["sourceTON"] == "MSISDN"


@pytest.mark.parametrize(
    ("fixture", "retryable", "opted_out", "code"),
    [
        ("send_unknown_subscriber", False, False, "2104"),
        ("send_throttled", True, False, "3"),
        ("send_opted_out", False, True, "2205"),
        ("send_bad_request", False, False, "104"),
        ("send_server_error", True, False, None),
    ],
)
def test_a_refused_message_maps_its_result_code(
    fixture: str, retryable: bool, opted_out: bool, code: str | None
) -> None:
    _, result = _send(fixture)

    assert result.status is SendStatus.REJECTED
    assert (result.retryable, result.opted_out, result.error_code) == (retryable, opted_out, code)


def _channel() -> LinkMobilityChannel:
    return LinkMobilityChannel(provider_config("linkmobility"))


def test_a_delivered_report_names_our_key() -> None:
    (update,) = _channel().parse_status(callback("linkmobility", "report_delivered"))

    assert update.status is DeliveryStatus.DELIVERED
    assert update.provider_id == "Dk3xYz9QaB7u" and update.message_key == "cb-42"
    assert update.at == datetime(2026, 12, 1, 10, 5, 9, tzinfo=UTC)
    assert update.segments == 1 and update.error_code is None


def test_sent_to_operator_is_on_its_way() -> None:
    (update,) = _channel().parse_status(callback("linkmobility", "report_sent_to_operator"))
    assert update.status is DeliveryStatus.SENT and not update.permanent


def test_an_expired_message_failed_for_now() -> None:
    (update,) = _channel().parse_status(callback("linkmobility", "report_expired"))
    assert update.status is DeliveryStatus.FAILED
    assert update.error_code == "1002" and not update.permanent and not update.opted_out


def test_an_unknown_subscriber_is_permanent() -> None:
    (update,) = _channel().parse_status(callback("linkmobility", "report_unknown_subscriber"))
    assert update.status is DeliveryStatus.FAILED
    assert update.permanent and not update.opted_out


def test_service_rejected_by_subscriber_is_an_opt_out() -> None:
    (update,) = _channel().parse_status(callback("linkmobility", "report_opted_out"))
    assert update.status is DeliveryStatus.FAILED
    assert update.opted_out and update.permanent and update.message_key == "cb-44"


def test_a_report_without_result_code_names_the_field() -> None:
    with pytest.raises(ValueError, match="resultCode"):
        _channel().parse_status(callback("linkmobility", "report_no_result_code"))


def test_an_mo_stop() -> None:
    (reply,) = _channel().parse_inbound(callback("linkmobility", "mo_stop"))

    assert reply.sender == "+4740000001" and reply.text == "STOPP"
    assert reply.to == "2034" and reply.provider_id == "Mo8fG2hJ4kL6"


def test_an_mo_without_text_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"content\.userData"):
        _channel().parse_inbound(callback("linkmobility", "mo_no_text"))


def test_without_a_token_every_gate_call_passes() -> None:
    assert _channel().verify(callback("linkmobility", "report_delivered"))


def test_an_unreadable_sms_count_does_not_undo_an_accepted_send() -> None:
    replay = Replay("linkmobility", "send_accepted")
    replay.exchange["response"]["json"]["smsCount"] = "two"

    result = LinkMobilityChannel(provider_config("linkmobility"), replay.transport).send(MESSAGE)

    assert result.status is SendStatus.ACCEPTED and result.segments is None


def test_a_result_code_link_does_not_publish_changes_nothing() -> None:
    request = callback("linkmobility", "report_delivered", extra={"resultCode": 9999})
    assert _channel().parse_status(request) == []


def test_a_send_answer_with_an_unpublished_code_is_unknown() -> None:
    # It may have been taken: the report, which carries refId, settles it; no blind resend.
    replay = Replay("linkmobility", "send_accepted")
    replay.exchange["response"]["json"]["resultCode"] = 9999

    result = LinkMobilityChannel(provider_config("linkmobility"), replay.transport).send(MESSAGE)

    assert result.status is SendStatus.UNKNOWN
