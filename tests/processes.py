"""Real `vivix serve` processes for multi-process scenarios: started on free local ports,
awaited on /readyz, always stopped (terminate, then kill), their output kept in a log file
so a failing test can show what the server said."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 60.0  # generous: CI machines have 2 cores shared with the rest of the suite
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; it is released for the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def server_env(**settings: str) -> dict[str, str]:
    """The parent's environment without any VIVIX_ variable (nothing leaks in from the
    developer's shell), plus `settings` given as VIVIX_ variables, e.g.
    `server_env(DATABASE_URL=..., DB__POOL_SIZE="5")`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VIVIX_")}
    env.update({f"VIVIX_{name.upper()}": value for name, value in settings.items()})
    env.setdefault("VIVIX_LOG_LEVEL", "warning")
    return env


def run_cli_together(
    args: list[str], env: dict[str, str], count: int, timeout_s: float = 60.0
) -> list[tuple[int, str]]:
    """Run `vivix <args>` in `count` processes started at the same moment; each one's exit
    code and output (stdout and stderr). Processes still running at the timeout are killed."""
    command = [sys.executable, "-m", "vivix", *args]
    processes = [
        subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + timeout_s
    results = []
    try:
        for process in processes:
            try:
                out, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
                out += f"\n(killed after {timeout_s}s)"
            results.append((process.returncode, out))
    finally:  # whatever happened above: nothing left running, no pipe left open
        for process in processes:
            if process.poll() is None:
                process.kill()
            if process.stdout is not None and not process.stdout.closed:
                process.communicate()
    return results


@dataclass
class ServerProcess:
    """One `vivix serve --no-worker` process."""

    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr, interleaved)."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll /readyz until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise ServerStartError(
                        f"{self.name} exited with {self.process.returncode} before it was "
                        f"ready:\n{self.output()}"
                    )
                try:
                    if http.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{self.name} not ready after {timeout_s}s:\n{self.output()}"
                    )
                time.sleep(0.05)

    def stop(self) -> int:
        """Terminate (SIGTERM: uvicorn shuts down gracefully), kill if that hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        return self.process.returncode


def _spawn(name: str, env: dict[str, str], log_dir: Path, *, worker: bool = False) -> ServerProcess:
    port = free_port()
    log_path = log_dir / f"{name}.log"
    env = {**env, "VIVIX_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    command = [
        sys.executable, "-m", "vivix", "serve", *(() if worker else ("--no-worker",)),
        "--host", "127.0.0.1", "--port", str(port), "--json",
    ]  # fmt: skip
    # The child writes straight into the log file: no pipe to drain or to leave unclosed.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return ServerProcess(name, port, log_path, process)


def _start(
    name: str, env: dict[str, str], log_dir: Path, stack: ExitStack, *, worker: bool = False
) -> ServerProcess:
    server = _spawn(name, env, log_dir, worker=worker)
    stack.callback(server.stop)
    return server


def _ready(
    server: ServerProcess,
    env: dict[str, str],
    log_dir: Path,
    stack: ExitStack,
    timeout_s: float = READY_TIMEOUT_S,
) -> ServerProcess:
    """Wait for `server`; if the port we picked was taken meanwhile, start it again on another."""
    for attempt in range(_PORT_ATTEMPTS):
        try:
            server.wait_ready(timeout_s)
            return server
        except ServerStartError:
            taken = "already in use" in server.output().lower()
            if not taken or attempt + 1 == _PORT_ATTEMPTS:
                raise
            server.stop()
            worker = "--no-worker" not in server.process.args  # type: ignore[operator]
            server = _start(server.name, env, log_dir, stack, worker=worker)
    raise AssertionError("unreachable")


@contextmanager
def running_servers(
    count: int, env: dict[str, str], log_dir: Path, *, database_has_accounts: bool = False
) -> Iterator[list[ServerProcess]]:
    """`count` API processes sharing `env` (one database, one Redis), all stopped on exit
    whatever happens. On an empty database `vivix serve` creates the demo account, and
    replicas racing to do that trip over each other: unless `database_has_accounts`, the
    first is started alone and the rest together after it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        names = [f"server-{i}" for i in range(1, count + 1)]
        if database_has_accounts:
            started = [_start(name, env, log_dir, stack) for name in names]
        else:
            started = [_ready(_start(names[0], env, log_dir, stack), env, log_dir, stack)]
            started += [_start(name, env, log_dir, stack) for name in names[1:]]
        yield [_ready(server, env, log_dir, stack) for server in started]


@contextmanager
def running_server_with_worker(env: dict[str, str], log_dir: Path) -> Iterator[ServerProcess]:
    """One `vivix serve` with its embedded worker: the whole product in one process, as a
    user runs it. It also starts the render process pool: allow it a slow start."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        server = _start("serve", env, log_dir, stack, worker=True)
        yield _ready(server, env, log_dir, stack, timeout_s=3 * READY_TIMEOUT_S)
