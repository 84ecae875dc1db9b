"""Schemathesis against the real server, driven by /openapi.json itself: generated valid
and invalid requests for every operation must never get a 500, and every answer must match
the document (status, content type, headers, body schema)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.live.conftest import LiveServer
from tests.openapi_conformance import response_problems

# Per operation and mode; operations with few distinct inputs stop early on their own.
EXAMPLES_PER_OPERATION = 160
MIN_REQUESTS = 2000
# The account's event stream stays open by design (pings every 15 s): a call would never
# end. tests/events checks that its events carry the generation exactly as GET returns it,
# and GET answers are checked against the document.
ENDLESS_STREAMS = {"/api/v1/events"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _exercise(
    strategy: Any, label: str, live_server: LiveServer, account: Any, sent: dict[str, int]
) -> Any:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        # The same cases every run: CI must not turn red on a draw. Set
        # VIVIX_FUZZ_RANDOM=1 to explore new ones locally.
        derandomize=os.environ.get("VIVIX_FUZZ_RANDOM") != "1",
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def exercise(case: Any) -> None:
        # A held submit (Prefer: wait) would only slow the run down.
        (case.headers or {}).pop("Prefer", None)
        headers = {**(case.headers or {}), **account.headers}
        response = case.call(base_url=live_server.base_url, headers=headers, timeout=30)
        sent[label] = sent.get(label, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        pairs = [(name, value) for name, values in response.headers.items() for value in values]
        checked = httpx.Response(response.status_code, headers=pairs, content=response.content)
        problems = response_problems(case.method.upper(), case.formatted_path, checked)
        assert not problems, problems

    return exercise


def test_generated_requests_get_no_500_and_match_the_document(live_server: LiveServer) -> None:
    account = live_server.account(calls_per_minute=1_000_000, concurrent_jobs=2)
    document = httpx.get(f"{live_server.base_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    sent: dict[str, int] = {}
    failures: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ENDLESS_STREAMS:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} [{mode.value}]"
            exercise = _exercise(
                operation.as_strategy(generation_mode=mode), label, live_server, account, sent
            )
            try:
                exercise()
            except Unsatisfiable:
                continue  # nothing invalid can be said to this operation in this mode
            except Exception as exc:  # collect, so one run reports every operation's faults
                failures.append(f"{label}: {exc}")

    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests over {len(sent)} operation/mode pairs")
    assert not failures, "\n\n".join(failures)
    assert total >= MIN_REQUESTS, sent


@pytest.mark.parametrize("path", ["/openapi.json"])
def test_the_document_is_openapi_3_1_with_unique_operation_ids(
    live_server: LiveServer, path: str
) -> None:
    document = httpx.get(f"{live_server.base_url}{path}").json()
    assert document["openapi"].startswith("3.1")
    ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
