"""`vivix-client`, the command line for API users, run as a user runs it (a subprocess
against the real server): progress bar on --wait, files written by --out, tables, JSON,
and exit codes per error class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.live.conftest import BROKEN_MODEL, LiveAccount, LiveServer

CLI = str(Path(sys.executable).parent / "vivix-client")


def vivix_client(
    live_server: LiveServer, account: LiveAccount | None, *args: str, tty: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIVIX_")}
    env["VIVIX_BASE_URL"] = live_server.base_url
    if account is not None:
        env["VIVIX_API_KEY"] = account.key
    if tty:  # rich draws its live progress bar as on a terminal
        env.update({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"})
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_generate_wait_out_shows_a_progress_bar_and_writes_the_file(
    live_server: LiveServer, tmp_path: Path
) -> None:
    account = live_server.account()
    out = tmp_path / "out"
    result = vivix_client(
        live_server, account,
        "generate", "vivix-local-image", "--prompt", "a lighthouse at dusk",
        "--param", "aspect_ratio=16:9", "--param", "number_results=2", "--param", "resolution=1K",
        "--wait", "--out", str(out),
        tty=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The bar (rich's ━ segments), the status line and the ETA column, drawn on stderr.
    assert "━" in result.stderr
    assert "vivix-local-image: completed" in result.stderr
    assert "100%" in result.stderr
    assert "ETA" in result.stderr
    files = sorted(out.iterdir())
    assert len(files) == 2
    for path in files:
        assert f"saved {path}" in result.stdout
        with Image.open(path) as image:
            image.load()
            assert image.width > image.height
    assert "completed" in result.stdout


def test_get_list_cancel_credits_and_models_with_json(
    live_server: LiveServer, tmp_path: Path
) -> None:
    account = live_server.account(concurrent_jobs=5)
    submitted = vivix_client(
        live_server, account, "generate", "vivix-local-audio", "-p", "a bell", "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    generation_id = json.loads(submitted.stdout)["generation_id"]
    waited = vivix_client(live_server, account, "get", generation_id, "--wait", "--json")
    assert json.loads(waited.stdout)["status"] == "completed"
    listed = vivix_client(live_server, account, "list", "--json")
    assert [g["generation_id"] for g in json.loads(listed.stdout)] == [generation_id]
    table = vivix_client(live_server, account, "list")
    assert generation_id[:8] in table.stdout
    models = vivix_client(live_server, account, "models")
    assert "vivix-local-image" in models.stdout
    assert "not_configured" in models.stdout
    as_json = json.loads(vivix_client(live_server, account, "models", "--json").stdout)
    assert {m["slug"] for m in as_json["models"]} >= {"vivix-local-image", "gpt-image-1"}
    credits = json.loads(vivix_client(live_server, account, "--json", "credits").stdout)
    assert credits["held"] == 0
    video = vivix_client(
        live_server,
        account,
        "generate",
        "vivix-local-video",
        "-p",
        "w",
        "--param",
        "duration=10",
        "--json",
    )
    video_id = json.loads(video.stdout)["generation_id"]
    canceled = vivix_client(live_server, account, "cancel", video_id, "--json")
    assert json.loads(canceled.stdout)["status"] == "canceled"


def test_exit_codes_per_error_class(live_server: LiveServer) -> None:
    account = live_server.account(credits=0)
    cases = [
        ((None, "credits"), 1),  # no key at all: a client-side error
        ((account, "generate", "vivix-local-image", "-p", "x", "--param", "number_results=9"), 2),
        ((account, "generate", "vivix-local-image", "-p", "x", "--param", "oops"), 2),
        ((account, "generate", "vivix-local-image", "-p", "x"), 4),
        ((account, "get", "00000000-0000-7000-8000-000000000000"), 5),
        ((account, "generate", "gpt-image-1", "-p", "x"), 9),
    ]
    for (who, *args), code in cases:
        result = vivix_client(live_server, who, *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert "error" in result.stderr
    wrong = LiveAccount("nobody", "vvx_live_" + "B" * 32)
    assert vivix_client(live_server, wrong, "credits").returncode == 3
    funded = live_server.account()
    failed = vivix_client(
        live_server, funded, "generate", BROKEN_MODEL, "-p", "x", "--wait", "--json"
    )
    assert failed.returncode == 10, failed.stderr
    assert json.loads(failed.stdout)["status"] == "failed"
    unreachable = subprocess.run(
        [CLI, "--base-url", "http://127.0.0.1:9", "--api-key", wrong.key, "--max-retries", "0", "credits"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unreachable.returncode == 7
