"""deploy/grafana/vivix-dashboard.json: valid JSON a Grafana can import, and every series
its queries name is one Vivix exports (the process families and the ones read from the
database at scrape time), so no panel stays empty because of a typo or a rename."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from vivix.kit.metrics import REGISTRY
from vivix.operations.metrics import shared_state_registry
from vivix.runtime import Runtime

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "vivix-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}


def exported_series(*registries: CollectorRegistry) -> set[str]:
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


async def test_dashboard_queries_name_only_exported_series(runtime: Runtime) -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    assert dashboard["uid"]
    assert dashboard["title"]
    exported = exported_series(REGISTRY, await shared_state_registry(runtime))
    used: set[str] = set()
    ids = []
    for panel in _panels(dashboard):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used.update(re.findall(r"\bvivix_[a-z_]+", target["expr"]))
    assert len(ids) == len(set(ids))
    assert used - exported == set()
    # Every family the issue asks for is on the dashboard.
    for family in (
        "vivix_queue_depth",
        "vivix_queue_wait_seconds_bucket",
        "vivix_job_run_seconds_bucket",
        "vivix_generations_finished_total",
        "vivix_provider_requests_total",
        "vivix_provider_request_seconds_bucket",
        "vivix_provider_circuit_open",
        "vivix_webhook_deliveries_total",
        "vivix_webhook_delivery_lag_seconds_bucket",
        "vivix_credits_held_total",
        "vivix_credits_captured_total",
        "vivix_credits_released_total",
        "vivix_admission_batch_size_sum",
        "vivix_sse_streams_open",
    ):
        assert family in used, family
