"""A TCP proxy a test owns, to cut a service's connections on purpose (PostgreSQL, Redis).

`TcpProxy` listens on 127.0.0.1 and forwards every connection to the real service.
`cut()` resets every open connection at once and refuses new ones (the listening socket
is closed, so connects fail fast with ECONNREFUSED, as when a service goes away) until
`restore()`; `cut_for(seconds)` does both. It runs in the caller's event loop; the chaos
harness, which must keep it alive while the processes it serves are killed, runs it in
a thread of its own (`ThreadedTcpProxy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port or _free_port()
        self.cuts = 0
        self.connections_made = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        await self.restore()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self.cuts += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client, upstream in list(self._pairs):
            _reset(client)
            _reset(upstream)
        self._pairs.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def cut_for(self, seconds: float) -> None:
        await self.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.restore()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self.connections_made += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [
            self._spawn(_pump(reader, up_writer)),
            self._spawn(_pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pairs.discard(pair)
            for end in pair:
                end.close()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), like a cut cable or a killed peer, not a polite FIN."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    with contextlib.suppress(Exception):
        writer.transport.abort()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class ThreadedTcpProxy:
    """A TcpProxy on an event loop in its own thread, driven from synchronous code."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = TcpProxy(target_host, target_port)
        self._call(self.proxy.start)

    @property
    def port(self) -> int:
        return self.proxy.port

    def cut(self) -> None:
        self._call(self.proxy.cut)

    def restore(self) -> None:
        self._call(self.proxy.restore)

    def close(self) -> None:
        self._call(self.proxy.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, work: Callable[[], Awaitable[None]]) -> None:
        asyncio.run_coroutine_threadsafe(work(), self._loop).result(10)  # type: ignore[arg-type]
