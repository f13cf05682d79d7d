"""A local fake of Twilio's Messages API (over httpx.MockTransport) and of its callbacks.

The fake checks every CreateMessage request against the operation's request schema in Twilio's
published OpenAPI document (../shared/specs/twilio_api_v2010.json), answers from the
recorded fixtures, and signs the callbacks it sends back with Twilio's algorithm, written here
independently of cartback's: base64(HMAC-SHA1(auth token, URL + sorted name+value pairs)).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import jsonschema_rs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers" / "twilio"
SPEC = Path("/work/shared/specs/twilio_api_v2010.json")
MESSAGES_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"

ACCOUNT_SID = "AC00000000000000000000000000000001"
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
SENDER = "+15550001111"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def sign(token: str, url: str, params: list[tuple[str, str]]) -> str:
    data = url
    for name, value in sorted(params):
        data += name + value
    mac = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def create_message_schema() -> dict[str, Any]:
    spec = json.loads(SPEC.read_text())
    operation = spec["paths"][MESSAGES_PATH]["post"]
    assert operation["operationId"] == "CreateMessage"
    schema = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    # The schema's $refs point into the document's components.
    return {**schema, "components": spec["components"]}


# Form fields arrive as text; these are the schema's integer and boolean fields we may send.
_TYPED = {"ValidityPeriod": int, "Attempt": int, "MaxPrice": float}


def typed_form(form: dict[str, str]) -> dict[str, Any]:
    """Numbers as numbers; text that is not one stays text, so the schema refuses it."""
    typed: dict[str, Any] = {}
    for name, value in form.items():
        try:
            typed[name] = _TYPED[name](value) if name in _TYPED else value
        except ValueError:
            typed[name] = value
    return typed


@dataclass
class FakeTwilio:
    """Twilio's Messages API: `answers` (fixture name, HTTP status) are served in turn, the last
    one repeating; every request is validated and kept."""

    answers: list[tuple[str, int]] = field(
        default_factory=lambda: [("create_message_201.json", 201)]
    )
    requests: list[dict[str, str]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        schema = create_message_schema()
        self.validator = jsonschema_rs.validator_for(schema)
        # The schema allows any extra field; a misspelt one would be ignored by Twilio.
        self.fields = set(schema["properties"])

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        expected = MESSAGES_PATH.replace("{AccountSid}", ACCOUNT_SID)
        if request.method != "POST" or request.url.path != expected:
            return httpx.Response(404, json={"code": 20404, "status": 404})
        form = dict(parse_qsl(request.content.decode(), keep_blank_values=True))
        errors = [str(error) for error in self.validator.iter_errors(typed_form(form))]
        errors += [f"{name}: not a CreateMessage field" for name in set(form) - self.fields]
        if errors or "To" not in form or not ({"From", "MessagingServiceSid"} & set(form)):
            return httpx.Response(400, json={"code": 21602, "status": 400, "errors": errors})
        with self._lock:
            self.requests.append(form)
            self.auth.append(request.headers.get("authorization", ""))
            name, status = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
            number = len(self.requests)
        answer = json.loads(fixture(name))
        if status == 201:
            answer.update(sid=f"SM{number:032d}", to=form["To"], body=form["Body"])
        return httpx.Response(status, json=answer)


def callback(url: str, form: dict[str, str], token: str = AUTH_TOKEN) -> tuple[str, dict[str, str]]:
    """A signed form callback, as Twilio sends it: (body, headers)."""
    body = urlencode(form)
    signature = sign(token, url, list(form.items()))
    return body, {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": signature,
    }
