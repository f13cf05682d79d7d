"""SMPP 3.4 content: encoding a text into `submit_sm` parts, reading receipts and MO texts.

Pure functions, no sockets: the SMPP channel (channels/smpp.py) uses them on its bind.

A GSM-7 text goes with `data_coding` 0 as unpacked septets (one octet each, an extension
character as ESC + code); anything else goes as UCS-2 (`data_coding` 8, UTF-16BE). A text
longer than one SMS is cut into parts of 153 septets / 67 UTF-16 units behind a 6-octet UDH
(`05 00 03 ref total seq`, `esm_class` 0x40), never splitting an escape pair or a surrogate
pair, so the part count always equals `core.sms.count_segments`.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cartback.core.events import DeliveryStatus
from cartback.core.sms import GSM7_BASIC_TABLE, detect_encoding

DATA_CODING_GSM7 = 0x00
DATA_CODING_LATIN1 = 0x03
DATA_CODING_UCS2 = 0x08
ESM_CLASS_UDHI = 0x40
ESM_CLASS_TYPE_MASK = 0x3C
ESM_CLASS_RECEIPT = 0x04
ESM_CLASS_INTERMEDIATE = 0x20

_ESCAPE = 0x1B
_GSM7_EXTENSION_CODES: dict[str, int] = {
    "\x0c": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_GSM7_BASIC_CODES: dict[str, int] = {
    char: code for code, char in enumerate(GSM7_BASIC_TABLE) if code != _ESCAPE
}
_GSM7_FROM_EXTENSION = {code: char for char, code in _GSM7_EXTENSION_CODES.items()}

# Octets of payload: one SMS is 140 octets; a 7-septet / 6-octet UDH leaves 153 / 134.
_GSM7_SINGLE, _GSM7_PART = 160, 153
_UCS2_SINGLE, _UCS2_PART = 140, 134


@dataclass(frozen=True, slots=True)
class EncodedText:
    parts: tuple[bytes, ...]
    data_coding: int
    esm_class: int


def _gsm7_units(text: str) -> list[bytes]:
    units = []
    for char in text:
        if char in _GSM7_EXTENSION_CODES:
            units.append(bytes((_ESCAPE, _GSM7_EXTENSION_CODES[char])))
        else:
            units.append(bytes((_GSM7_BASIC_CODES[char],)))
    return units


def encode_text(text: str, reference_seed: str = "") -> EncodedText:
    """The `submit_sm` parts for `text`. The concatenation reference comes from
    `reference_seed` (the message key), so a message's parts always share one reference."""
    if detect_encoding(text) == "GSM-7":
        units, single, part, coding = _gsm7_units(text), _GSM7_SINGLE, _GSM7_PART, 0
    else:
        units = [char.encode("utf-16-be") for char in text]
        single, part, coding = _UCS2_SINGLE, _UCS2_PART, DATA_CODING_UCS2
    whole = b"".join(units)
    if len(whole) <= single:
        return EncodedText((whole,), coding, 0)
    chunks: list[bytes] = []
    current = b""
    for unit in units:
        if len(current) + len(unit) > part:  # never split an escape or a surrogate pair
            chunks.append(current)
            current = b""
        current += unit
    chunks.append(current)
    if len(chunks) > 255:
        raise ValueError("text: too long for one concatenated SMS (255 parts at most)")
    reference = zlib.crc32(reference_seed.encode("utf-8")) & 0xFF
    total = len(chunks)
    parts = tuple(
        bytes((0x05, 0x00, 0x03, reference, total, seq)) + chunk
        for seq, chunk in enumerate(chunks, start=1)
    )
    return EncodedText(parts, coding, ESM_CLASS_UDHI)


def decode_gsm7(octets: bytes) -> str:
    """Unpacked GSM-7 septets (one per octet) as text."""
    chars: list[str] = []
    escaped = False
    for octet in octets:
        if escaped:
            chars.append(_GSM7_FROM_EXTENSION.get(octet, " "))
            escaped = False
        elif octet == _ESCAPE:
            escaped = True
        else:
            chars.append(GSM7_BASIC_TABLE[octet & 0x7F])
    return "".join(chars)


def decode_text(octets: bytes, data_coding: int) -> str:
    coding = data_coding & 0x0F if data_coding & 0xF0 in (0x00, 0xF0) else data_coding
    if coding == DATA_CODING_UCS2:
        return octets.decode("utf-16-be", "replace")
    if coding == DATA_CODING_GSM7 and all(octet < 0x80 for octet in octets):
        return decode_gsm7(octets)
    # Latin-1 (3), IA5 (1) and SMSCs that send 8-bit text under the default coding.
    return octets.decode("latin-1")


@dataclass(frozen=True, slots=True)
class UserData:
    """An MO's payload with its UDH taken off, and the concatenation it belongs to."""

    payload: bytes
    reference: int | None = None
    total: int = 1
    seq: int = 1


def split_udh(short_message: bytes, esm_class: int) -> UserData:
    if not esm_class & ESM_CLASS_UDHI or not short_message:
        return UserData(short_message)
    length = short_message[0]
    header, payload = short_message[1 : 1 + length], short_message[1 + length :]
    position = 0
    while position + 2 <= len(header):
        iei, size = header[position], header[position + 1]
        value = header[position + 2 : position + 2 + size]
        if iei == 0x00 and size == 3:
            return UserData(payload, value[0], value[1], value[2])
        if iei == 0x08 and size == 4:
            return UserData(payload, (value[0] << 8) | value[1], value[2], value[3])
        position += 2 + size
    return UserData(payload)


# SMPP 3.4 message_state values and the receipt text's `stat:` words.
_STATE_NAMES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
_STATUS_OF_STAT: dict[str, DeliveryStatus] = {
    "ENROUTE": DeliveryStatus.SENT,
    "ACCEPTD": DeliveryStatus.SENT,
    "DELIVRD": DeliveryStatus.DELIVERED,
    "EXPIRED": DeliveryStatus.FAILED,
    "DELETED": DeliveryStatus.FAILED,
    "UNDELIV": DeliveryStatus.FAILED,
    "REJECTD": DeliveryStatus.FAILED,
}
_RECEIPT = re.compile(
    r"id:(?P<id>\S+).*?(?:done date:(?P<done>\d{10,12}))?\s*stat:(?P<stat>[A-Z]+)"
    r"(?:\s+err:(?P<err>\w+))?",
    re.DOTALL | re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    stat: str
    status: DeliveryStatus | None
    error_code: str | None
    at: datetime | None


def read_receipt(
    text: bytes,
    receipted_message_id: str | None,
    message_state: int | None,
    network_error: bytes | None,
) -> Receipt | None:
    """A delivery receipt from its TLVs, falling back to the `id:… stat:… err:…` text."""
    found = _RECEIPT.search(text.decode("latin-1"))
    message_id = receipted_message_id or (found.group("id") if found else None)
    if message_state is not None and message_state in _STATE_NAMES:
        stat = _STATE_NAMES[message_state]
    elif found:
        stat = found.group("stat").upper()
    else:
        stat = ""
    if not message_id or not stat:
        return None
    err = found.group("err") if found else None
    if (not err or not err.strip("0")) and network_error and len(network_error) == 3:
        err = str(int.from_bytes(network_error[1:], "big"))
    if err is not None and not err.strip("0"):
        err = None
    at = None
    if found and found.group("done"):
        done = found.group("done")
        try:
            at = datetime.strptime(done, "%y%m%d%H%M%S" if len(done) == 12 else "%y%m%d%H%M")
            at = at.replace(tzinfo=UTC)
        except ValueError:
            at = None
    status = _STATUS_OF_STAT.get(stat)
    if status is DeliveryStatus.FAILED and err is None:
        err = str(message_state) if message_state is not None else stat
    return Receipt(message_id, stat, status, err if status is DeliveryStatus.FAILED else None, at)


def id_forms(message_id: str) -> list[str]:
    """The forms one SMSC id may take: SMSCs answer submit_sm in hex and report receipts in
    decimal, or the other way round."""
    forms = [message_id.lower()]
    if re.fullmatch(r"[0-9a-fA-F]{1,16}", message_id):
        forms.append(str(int(message_id, 16)))
    if message_id.isdigit() and len(message_id) <= 20:
        forms.append(f"{int(message_id):x}")
    return forms
