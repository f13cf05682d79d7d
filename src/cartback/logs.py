"""Logging for the long-running commands, with personal data masked on the way out.

Logs never carry message bodies, phone numbers or email addresses. Cartback's own log lines name
rows by id; what can still bring personal data into a line is text from elsewhere: a database
error that echoes the row it refused, SQL parameters, a provider's error message. `MaskingFilter`
rewrites every record's message and its formatted traceback before any handler writes it:

- email addresses become `<email>`, phone numbers (E.164 and national formats) `<phone>`;
- the parts of database errors that quote row values (SQL parameters, PostgreSQL's `DETAIL:
  Failing row contains (...)` and `Key (...)=(...)`) become `[values hidden]`, which removes
  message bodies along with everything else in the row.

Ids stay readable: a number written as `id=123`, `id 123` or `#123` is never taken for a phone.
"""

from __future__ import annotations

import logging
import re
from typing import Any

EMAIL_MASK = "<email>"
PHONE_MASK = "<phone>"
VALUES_MASK = "[values hidden]"

_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
# A run of digits with the separators people write in phone numbers, not starting inside a word,
# a number or a date; how many digits it holds decides whether it is a phone (see _phone).
_PHONE = re.compile(r"(?<![\w+\-./:=#])(?:\+|00)?\(?\d(?:[ .\-()]{0,2}\d)+(?![\w@])")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_ID_BEFORE = re.compile(r"(?:\bid|\bids)\s*[=: ]\s*[\[(]?$", re.IGNORECASE)
# Database error parts that quote values. Parameters run to the end of the line.
_VALUE_PARTS = (
    re.compile(r"\[parameters: .*?\](?=\n|$)", re.DOTALL),
    re.compile(r"(DETAIL:\s+Failing row contains ).*?(?=\n|$)"),
    re.compile(r"(DETAIL:\s+Key ).*?(?=\n|$)"),
)
_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15
_MIN_PLAIN_DIGITS = 8  # a bare run of digits, without + or separators


def mask(text: str) -> str:
    """`text` with emails, phone numbers and quoted row values replaced."""
    for pattern in _VALUE_PARTS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + VALUES_MASK, text)
    text = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE.sub(lambda match: _phone(match, text), text)


def _phone(match: re.Match[str], text: str) -> str:
    found = match.group()
    digits = sum(char.isdigit() for char in found)
    international = found.startswith(("+", "00"))
    separated = not found.isdigit()
    if _DATE.match(found) or _ID_BEFORE.search(text, 0, match.start()):
        return found
    if not _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS:
        return found
    if not (international or separated) and digits < _MIN_PLAIN_DIGITS:
        return found
    return PHONE_MASK


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask a record's message, its arguments and its traceback text, in place."""
    if getattr(record, "_cartback_masked", False):
        return record
    record.msg = mask(record.getMessage())
    record.args = None
    if record.exc_info and record.exc_info[1] is not None:
        # Format the traceback once, masked; every formatter then reuses exc_text as it is.
        record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = mask(record.exc_text)
    if record.stack_info:
        record.stack_info = mask(record.stack_info)
    record._cartback_masked = True
    return record


class MaskingFilter(logging.Filter):
    """For handlers: lets every record through, masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


def install_masking() -> None:
    """Mask every log record as it is created, whichever logger and handler it goes to
    (handlers that libraries or test tools add included). Safe to call more than once."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_cartback_masking", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_record(factory(*args, **kwargs))

    masked_record._cartback_masking = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, **handler_options: Any) -> logging.Handler:
    """One stderr handler on the root logger, masked. Every logger cartback and its libraries
    use (uvicorn, SQLAlchemy) propagates to it; none of them gets a handler of its own."""
    install_masking()
    handler = logging.StreamHandler(**handler_options)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_cartback", False):
            root.removeHandler(existing)
    handler._cartback = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
