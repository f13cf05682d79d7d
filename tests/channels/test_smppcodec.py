"""SMPP content: parts and codings agree with the segment counter; receipts and MO texts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cartback.channels.smppcodec import (
    decode_gsm7,
    decode_text,
    encode_text,
    id_forms,
    read_receipt,
    split_udh,
)
from cartback.core.events import DeliveryStatus
from cartback.core.sms import GSM7_BASIC, GSM7_EXTENSION, count_segments

_GSM = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=700)
_ANY = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400)


@given(st.one_of(_GSM, _ANY))
def test_parts_match_the_segment_counter_and_decode_back(text: str) -> None:
    encoded = encode_text(text, "cb-1")
    info = count_segments(text)
    assert len(encoded.parts) == info.segments
    assert encoded.data_coding == (0 if info.encoding == "GSM-7" else 8)
    long = len(encoded.parts) > 1
    assert encoded.esm_class == (0x40 if long else 0)
    payloads = [split_udh(p, encoded.esm_class).payload for p in encoded.parts]
    assert all(len(p) <= (153 if long else 160) for p in payloads)
    # Each part decodes alone: no escape or surrogate pair straddles two parts.
    assert "".join(decode_text(p, encoded.data_coding) for p in payloads) == text


def test_the_concatenation_reference_is_stable_per_key() -> None:
    text = "x" * 200
    assert encode_text(text, "cb-1").parts == encode_text(text, "cb-1").parts
    assert encode_text(text, "cb-1").parts[0][3] != encode_text(text, "cb-2").parts[0][3]


def test_gsm7_extension_and_nordic_letters() -> None:
    assert encode_text("€[å]").parts == (b"\x1be\x1b<\x0f\x1b>",)
    assert decode_gsm7(b"\x1be\x1b<\x0f\x1b>") == "€[å]"


def test_eight_bit_text_under_the_default_coding_reads_as_latin1() -> None:
    assert decode_text("Æble".encode("latin-1"), 0) == "Æble"
    assert decode_text(b"abc", 3) == "abc"


def test_receipt_tlvs_win_over_the_text() -> None:
    receipt = read_receipt(b"id:1 stat:DELIVRD err:000", "77", 5, None)
    assert receipt is not None
    assert (receipt.message_id, receipt.status, receipt.error_code) == (
        "77",
        DeliveryStatus.FAILED,
        "5",
    )


def test_receipt_text_alone_and_states_cartback_does_not_track() -> None:
    delivered = read_receipt(
        b"id:A1 sub:001 dlvrd:001 submit date:2601011200 done date:260101120130 "
        b"stat:DELIVRD err:000 text:hello",
        None,
        None,
        None,
    )
    assert delivered is not None and delivered.status is DeliveryStatus.DELIVERED
    assert delivered.at is not None and delivered.at.second == 30
    assert read_receipt(b"id:A1 stat:UNKNOWN err:000", None, None, None).status is None  # type: ignore[union-attr]
    assert read_receipt(b"not a receipt", None, None, None) is None


def test_id_forms_cover_hex_and_decimal() -> None:
    assert "368895" in id_forms("5A0FF")
    assert "5a0ff" in id_forms("368895")
