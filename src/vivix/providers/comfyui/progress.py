"""ComfyUI's progress events, which only its websocket carries (history and /queue say
nothing about a running run's steps).

`GET /ws?clientId=<id>` streams JSON text messages `{"type", "data"}` to that client id,
the one our `POST /prompt` bodies name: `progress` `{value, max, prompt_id, node}` while a
node with steps (a sampler) runs; newer servers also send `progress_state` `{prompt_id,
nodes: {id: {value, max, state}}}`. Binary messages (preview images) are ignored. One
connection per adapter (per process), opened on first use and reopened with backoff; a
fraction is kept per prompt until its result is collected, at most MAX_PROMPTS. Runs
resumed by another process (another client id) report no progress: the worker then
shows none, as for a server we can't reach over websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
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


def fraction_of(message: Any) -> tuple[str, float] | None:
    """(prompt_id, fraction done) from one decoded event, or None if it says none."""
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
    return (prompt_id, done / total) if total > 0 else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ProgressFeed:
    """The websocket listener of one adapter. `fraction(prompt_id)` is the last reported."""

    def __init__(self, base_url: str, client_id: str, headers: dict[str, str] | None) -> None:
        self.url = websocket_url(base_url, client_id)
        self._headers = headers
        self._fractions: OrderedDict[str, float] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="comfyui-progress")

    def fraction(self, prompt_id: str) -> float | None:
        return self._fractions.get(prompt_id)

    def forget(self, prompt_id: str) -> None:
        self._fractions.pop(prompt_id, None)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def note(self, text: str) -> None:
        try:
            found = fraction_of(json.loads(text))
        except ValueError:
            return
        if found is None:
            return
        prompt_id, fraction = found
        self._fractions[prompt_id] = fraction
        self._fractions.move_to_end(prompt_id)
        while len(self._fractions) > MAX_PROMPTS:
            self._fractions.popitem(last=False)

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
