"""The SDK's Server-Sent Events parser on the stream format of API.md §5.2."""

from __future__ import annotations

import json

from vivix_client._core import SSEParser, generation_of


def parse(text: str) -> list[tuple[str, str, str | None]]:
    parser = SSEParser()
    return [
        (event.event, event.data, event.id)
        for line in text.splitlines(keepends=True)
        for event in parser.feed(line)
    ]


def test_events_comments_ids_and_multiline_data() -> None:
    generation = {"generation_id": "g1", "status": "processing", "model": "m", "progress": 0.5}
    stream = (
        ": ping\n\n"
        f"id: 7\nevent: progress\ndata: {json.dumps(generation)}\n\n"
        "event: generation\ndata: first\ndata: second\n\n"
    )
    events = parse(stream)
    assert events == [
        ("progress", json.dumps(generation), "7"),
        ("generation", "first\nsecond", "7"),  # the last id carries over
    ]
    parser = SSEParser()
    (event,) = [e for line in stream.splitlines(keepends=True)[:6] for e in parser.feed(line)]
    parsed = generation_of(event)
    assert parsed is not None
    assert (parsed.status, parsed.progress) == ("processing", 0.5)
    assert parser.last_event_id == "7"
