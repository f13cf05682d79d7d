"""docs/schemas/events.json is the published event schema: it must match the code."""

from __future__ import annotations

import json
from pathlib import Path

from cartback.web.schemas import EventBatchIn

DOC = Path(__file__).resolve().parents[2] / "docs/schemas/events.json"


def test_the_published_json_schema_matches_the_api() -> None:
    published = json.loads(DOC.read_text())
    assert published == EventBatchIn.model_json_schema(), (
        "regenerate with: python -c 'import json; from cartback.web.schemas import EventBatchIn;"
        " print(json.dumps(EventBatchIn.model_json_schema(), indent=2, sort_keys=True))'"
        " > docs/schemas/events.json"
    )
