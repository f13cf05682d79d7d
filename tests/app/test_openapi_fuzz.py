"""Property-based fuzzing of every operation in the app's own OpenAPI document (schemathesis):
valid and invalid requests, with a valid key, on both backends. No answer is a 5xx, and every
4xx is a problem+json document that says what was wrong."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cartback.app import App
from cartback.config import load_settings
from cartback.web.app import create_app
from tests.support.world import World

# Per operation and backend; the whole module stays well under a minute on two cores.
EXAMPLES = 40
AUTH = {"Authorization": "Bearer cbk_test_key"}


def _document() -> dict[str, Any]:
    """The OpenAPI document as served; producing it touches no database."""
    served = create_app(cast(App, SimpleNamespace(settings=load_settings({}))))
    return cast(dict[str, Any], TestClient(served).get("/openapi.json").json())


schema = schemathesis.openapi.from_dict(_document())
# Valid and invalid requests alike, NUL bytes included.
assert set(schema.config.generation.modes) == set(GenerationMode)


@pytest.fixture
def api(world: World) -> FastAPI:
    return create_app(world.app)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_5xx_and_every_refusal_is_a_problem(api: FastAPI, case: Any) -> None:
    response = case.call(app=api, headers=AUTH)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"] == ["application/problem+json"], response.text
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["title"] and problem["detail"]
        if response.status_code == 422:
            assert problem["field"] == problem["errors"][0]["field"]
