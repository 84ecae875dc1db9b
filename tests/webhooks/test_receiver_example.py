"""The receiver example that `vivix webhooks example` prints (and the README shows), run as
a real receiver in its own process: it accepts a real delivery and refuses tampered ones."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import account_with_key
from tests.processes import free_port
from tests.webhooks.receiver import Receiver, wait_until
from vivix.runtime import Runtime
from vivix.webhooks.sender import WebhookSender

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"webhooks": {"allow_insecure_targets": True, "timeout_seconds": 5.0}}


@pytest.fixture
async def sender(runtime: Runtime) -> AsyncIterator[WebhookSender]:
    running = WebhookSender(runtime, "example-sender")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def printed_example() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "vivix", "webhooks", "example"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_the_readme_shows_the_example_the_cli_prints() -> None:
    example = printed_example()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), re.S)
    assert example in blocks
    assert len([line for line in example.splitlines() if line.strip()]) <= 22


async def answer(url: str, headers: dict[str, str], body: bytes) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.post(url, content=body, headers=headers)).status_code


async def test_the_printed_example_accepts_a_real_delivery_and_refuses_tampered_ones(
    runtime: Runtime,
    client: httpx.AsyncClient,
    receiver: Receiver,
    sender: WebhookSender,
    tmp_path: Path,
) -> None:
    acct = await account_with_key(runtime)
    port = free_port()
    example_url = f"http://127.0.0.1:{port}/hook"
    created = await client.post("/api/v1/webhooks", json={"url": example_url}, headers=acct.headers)
    assert created.status_code == 201, created.text
    hook: dict[str, Any] = created.json()
    script = tmp_path / "receiver.py"
    script.write_text(printed_example())
    env = {**os.environ, "VIVIX_WEBHOOK_SECRET": hook["secret"], "PORT": str(port)}
    out = tmp_path / "receiver.out"
    process = start(script, env, out)
    try:
        await wait_listening(port, process)
        # A real delivery, signed by the sender, to the example.
        queued = await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)
        delivery_id = queued.json()["id"]
        detail: dict[str, Any] = {}

        async def answered() -> bool:
            nonlocal detail
            detail = (
                await client.get(
                    f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery_id}",
                    headers=acct.headers,
                )
            ).json()
            return detail["status"] != "pending"

        for _ in range(200):
            if await answered():
                break
            await asyncio.sleep(0.05)
        assert (detail["status"], detail["last_status_code"]) == ("succeeded", 204), detail
        await wait_until(lambda: "webhook.test" in out.read_text(), what="the example's output")

        # The same delivery captured on its way (the endpoint pointed elsewhere, redelivered),
        # then replayed to the example as sent and tampered with.
        moved = await client.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"url": receiver.url}, headers=acct.headers
        )
        assert moved.status_code == 200, moved.text
        await client.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery_id}/redeliver",
            headers=acct.headers,
        )
        await wait_until(lambda: len(receiver.hooks()) == 1, what="the captured delivery")
        [got] = receiver.hooks()
        signed = {
            name: got.headers[name]
            for name in (
                "x-vivix-signature",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
            )
        }
        assert await answer(example_url, signed, got.body) == 204
        tampered_body = got.body.replace(b'"webhook.test"', b'"webhook.tesT"')
        assert tampered_body != got.body
        assert await answer(example_url, signed, tampered_body) == 401
        for name in signed:
            assert await answer(example_url, {**signed, name: "v1,AAAA"}, got.body) == 401, name
            without = {k: v for k, v in signed.items() if k != name}
            assert await answer(example_url, without, got.body) == 401, name
        assert process.poll() is None, out.read_text()
    finally:
        process.kill()
        process.wait(10)


def start(script: Path, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=sink, stderr=subprocess.STDOUT
        )


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert process.poll() is None, "the example exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError("the example never listened")
