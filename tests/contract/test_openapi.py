"""The committed OpenAPI document is the API: a test fails when code and file differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "v1.json"


@pytest.fixture(scope="module")
def app(settings: Settings) -> FastAPI:
    """An app that is never served: only its OpenAPI document is read."""
    return create_app(settings)


def test_committed_openapi_matches_the_code(app: FastAPI) -> None:
    committed = json.loads(SPEC.read_text())
    generated = json.loads(json.dumps(app.openapi()))
    if committed != generated:
        added = sorted(set(generated["paths"]) - set(committed["paths"]))
        removed = sorted(set(committed["paths"]) - set(generated["paths"]))
        raise AssertionError(
            "docs/openapi/v1.json is out of date; run `make openapi` "
            f"(paths added: {added}, removed: {removed})"
        )


def test_every_operation_documents_problem_responses(app: FastAPI) -> None:
    spec = app.openapi()
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "401" in responses and "404" in responses, f"{method.upper()} {path}"
            assert "application/problem+json" in responses["404"]["content"], f"{method.upper()} {path}"
