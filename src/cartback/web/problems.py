"""RFC 9457 problem details: every refusal names what was wrong, and where."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.errors = list(errors)
        self.headers = headers

    def response(self, instance: str) -> JSONResponse:
        body: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors:
            body["field"] = self.errors[0]["field"]
            body["errors"] = self.errors
        return JSONResponse(
            body, status_code=self.status, media_type=PROBLEM_TYPE, headers=self.headers
        )


def field_path(location: Iterable[int | str], skip: frozenset[str] = frozenset()) -> str:
    """('events', 3, 'contact', 'phone') → 'events[3].contact.phone'."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in skip:
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def invalid(
    errors: list[dict[str, str]], *, title: str = "Invalid event", slug: str = "invalid-event"
) -> Problem:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Problem(
        422, title, f"{first['field']}: {first['message']}{more}", slug=slug, errors=errors
    )


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "Body too large",
        f"the body is over {limit} bytes",
        slug="too-large",
        errors=[{"field": "body", "message": f"at most {limit} bytes"}],
    )


# Seconds a client is asked to wait when the database is out of reach.
RETRY_AFTER_SECONDS = 5


def unavailable() -> Problem:
    return Problem(
        503,
        "Service unavailable",
        "the database is out of reach; nothing was applied, so it is safe to retry",
        slug="unavailable",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def from_validation_error(
    error: ValidationError, prefix: tuple[int | str, ...] = (), skip: frozenset[str] = frozenset()
) -> Problem:
    errors = [
        {"field": field_path(prefix + tuple(item["loc"]), skip), "message": item["msg"]}
        for item in error.errors(include_url=False)
    ]
    return invalid(errors)
