"""The OpenAPI document is the contract: every documented operation is served, every
served /api/v1 route is documented, ids are unique, errors carry the error schema, and the
reference in docs/ is the document's current rendering."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi.routing import APIRoute

from vivix.app import create_app
from vivix.openapi import reference
from vivix.openapi.document import openapi_document
from vivix.runtime import Runtime

DOCUMENT = openapi_document()


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, methods in DOCUMENT["paths"].items()
        for method, op in methods.items()
    ]


def test_document_shape() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids)), ids
    assert DOCUMENT["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": DOCUMENT["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for method, path, op in operations():
        assert op["responses"], (method, path)
        if path.startswith("/api/v1/"):
            assert op["security"] == [{"bearerAuth": []}]
            for status in ("401", "429", "500"):
                error = op["responses"][status]["content"]["application/json"]["schema"]
                assert error["allOf"] == [{"$ref": "#/components/schemas/Error"}]
            success = min(status for status in op["responses"] if status.startswith("2"))
            assert "X-RateLimit-Remaining" in op["responses"][success]["headers"]
    submit = DOCUMENT["paths"]["/api/v1/generate"]["post"]
    assert {p["name"] for p in submit["parameters"]} == {"Idempotency-Key", "Prefer"}
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerateRequest"
    }
    assert "Retry-After" in submit["responses"]["503"]["headers"]
    assert set(
        submit["responses"]["503"]["content"]["application/json"]["schema"]["properties"]["error"][
            "enum"
        ]
    ) == {"PROVIDER_DOWN", "INTERNAL_ERROR"} - {"INTERNAL_ERROR"}


async def test_every_documented_operation_is_served_and_every_route_documented(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    # Routing-agnostic: a request without a key reaches the route's auth gate (401
    # UNAUTHORIZED), where an unknown route would answer 404 NOT_FOUND / 405.
    for method, path, op in operations():
        if not op["security"]:
            continue
        concrete = re.sub(r"\{\w+\}", "x", path)
        response = await client.request(method.upper(), concrete)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "UNAUTHORIZED"
    documented = {(m.upper(), p) for m, p, _ in operations()}
    app = create_app(runtime.settings, runtime=runtime)
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/api/"):
            for method in route.methods:
                assert (method, route.path) in documented, (method, route.path)


async def test_served_document_is_the_built_one(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT


def test_docs_reference_is_up_to_date() -> None:
    assert reference.main(["--check"]) == 0, "run: python -m vivix.openapi.reference"
    text = (reference.DOCS_DIR / "reference.md").read_text("utf-8")
    for _, _, op in operations():
        assert f"Operation id `{op['operationId']}`" in text
