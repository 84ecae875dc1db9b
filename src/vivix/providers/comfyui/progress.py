"""ComfyUI's progress events, which only its websocket carries (history and /queue say
nothing about a running run's steps).

`GET /ws?clientId=<id>` streams JSON text messages `{"type", "data"}` to that client id,
the one our `POST /prompt` bodies name: `progress` `{value, max, prompt_id, node}` while a
node with steps (a sampler) runs; newer servers also send `progress_state` `{prompt_id,
nodes: {id: {value, max, state}}}`. Binary messages (preview images) are ignored. One
connection per adapter (per process), opened on first use and reopened with backoff; a
run's progress is kept per prompt until its result is collected, at most MAX_PROMPTS.
`progress` speaks of one node at a time, so a workflow with two samplers (a base and a
refiner, a hires pass) would show 100 % when the first one ends: each node's share is kept
and divided by the number of step nodes the submitted workflow has (`step_nodes`). Runs
resumed by another process (another client id) report no progress: the worker then
shows none, as for a server we can't reach over websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog
from websockets.asyncio.client import connect

log = structlog.get_logger(__name__)

MAX_PROMPTS = 1000
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # previews come over the same socket
RECONNECT_S = (0.5, 30.0)


def websocket_url(base_url: str, client_id: str) -> str:
    scheme, _, rest = base_url.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    return f"{ws_scheme}://{rest.rstrip('/')}/ws?clientId={client_id}"


# Node classes that run steps and report them in `progress` messages (ComfyUI's samplers).
STEP_NODE_CLASSES = frozenset(
    {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
)


def step_nodes(workflow: dict[str, Any]) -> int:
    """How many nodes of an API-format workflow report steps while they run."""
    return sum(
        1
        for node in workflow.values()
        if isinstance(node, dict) and node.get("class_type") in STEP_NODE_CLASSES
    )


@dataclass
class StepReport:
    """What one event says of a run: the whole run's fraction (`progress_state` covers
    every node) or one node's (`progress`)."""

    prompt_id: str
    fraction: float
    node: str | None = None


def report_of(message: Any) -> StepReport | None:
    """What one decoded event says of a run's progress, or None if it says nothing."""
    if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
        return None
    data = message["data"]
    prompt_id = data.get("prompt_id")
    if not isinstance(prompt_id, str):
        return None
    if message.get("type") == "progress":
        steps = [data]
    elif message.get("type") == "progress_state" and isinstance(data.get("nodes"), dict):
        steps = [node for node in data["nodes"].values() if isinstance(node, dict)]
    else:
        return None
    done = total = 0.0
    for step in steps:
        value, most = step.get("value"), step.get("max")
        if _number(value) and _number(most) and most > 0:
            done += min(value, most)
            total += most
    if total <= 0:
        return None
    if message["type"] == "progress_state":
        return StepReport(prompt_id, done / total)
    return StepReport(prompt_id, done / total, str(data.get("node", "?")))


@dataclass
class RunProgress:
    """One run's progress: each step node's fraction (from `progress`), or the whole run's
    (from `progress_state`, which newer servers send and which wins)."""

    expected_nodes: int = 0
    nodes: dict[str, float] = field(default_factory=dict)
    whole: float | None = None

    def note(self, report: StepReport) -> None:
        if report.node is None:
            self.whole = report.fraction
        else:
            self.nodes[report.node] = report.fraction

    def fraction(self) -> float | None:
        if self.whole is not None:
            return self.whole
        if not self.nodes:
            return None
        return sum(self.nodes.values()) / max(self.expected_nodes, len(self.nodes))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ProgressFeed:
    """The websocket listener of one adapter. `fraction(prompt_id)` is the last reported."""

    def __init__(self, base_url: str, client_id: str, headers: dict[str, str] | None) -> None:
        self.url = websocket_url(base_url, client_id)
        self._headers = headers
        self._runs: OrderedDict[str, RunProgress] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="comfyui-progress")

    def expect(self, prompt_id: str, step_node_count: int) -> None:
        """The run of `prompt_id` has this many step nodes (its events may be in already)."""
        self._run(prompt_id).expected_nodes = step_node_count

    def fraction(self, prompt_id: str) -> float | None:
        run = self._runs.get(prompt_id)
        return run.fraction() if run is not None else None

    def forget(self, prompt_id: str) -> None:
        self._runs.pop(prompt_id, None)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def note(self, text: str) -> None:
        try:
            report = report_of(json.loads(text))
        except ValueError:
            return
        if report is not None:
            self._run(report.prompt_id).note(report)

    def _run(self, prompt_id: str) -> RunProgress:
        run = self._runs.get(prompt_id)
        if run is None:
            run = self._runs[prompt_id] = RunProgress()
        self._runs.move_to_end(prompt_id)
        while len(self._runs) > MAX_PROMPTS:
            self._runs.popitem(last=False)
        return run

    async def _listen(self) -> None:
        delay = RECONNECT_S[0]
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers=self._headers,
                    max_size=MAX_MESSAGE_BYTES,
                    proxy=None,
                ) as socket:
                    delay = RECONNECT_S[0]
                    async for message in socket:
                        if isinstance(message, str):
                            self.note(message)
            except Exception as exc:  # unreachable, refused, closed: try again later
                log.debug("comfyui_progress_socket_down", url=self.url, error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(RECONNECT_S[1], delay * 2)
