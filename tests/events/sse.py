"""Reading a server-sent event stream in tests: a small parser of the wire format
(independent of the product's and the SDK's), over httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    id: str | None
    event: str
    data: dict[str, Any]


@dataclass
class Stream:
    response: httpx.Response
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None

    async def next(self, within: float = 30.0) -> Event | None:
        """The next event, or None when the server closed the stream."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, list[str]] = {}
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line == "":
                    if "data" in fields:
                        event = Event(
                            fields.get("id", [None])[-1],
                            fields.get("event", ["message"])[-1],
                            json.loads("\n".join(fields["data"])),
                        )
                        self.events.append(event)
                        return event
                    fields = {}
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
        return None

    async def pings(self, count: int, within: float = 30.0) -> list[str]:
        """Read on until `count` comment lines came (events meanwhile are kept)."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    if len(self.comments) >= count:
                        break
        return self.comments

    async def until(self, predicate: Any, within: float = 60.0) -> Event:
        async with asyncio.timeout(within):
            while True:
                event = await self.next(within)
                assert event is not None, f"stream closed; saw {self.events}"
                if predicate(event):
                    return event

    async def rest(self, within: float = 60.0) -> list[Event]:
        """Every event until the server closes the stream."""
        seen = []
        while (event := await self.next(within)) is not None:
            seen.append(event)
        return seen
