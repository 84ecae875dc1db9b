"""The SDK stands alone: a fresh virtual environment with only `vivix-client` installed
(and what it depends on: httpx, pydantic) runs the README's ten-line example against the
real server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.live.conftest import LiveServer

REPO = Path(__file__).parents[2]
SDK = REPO / "clients" / "python"


def _uv() -> str:
    local = REPO / ".tools" / "bin" / "uv"
    found = shutil.which("uv") or (str(local) if local.exists() else None)
    assert found, "uv is needed (make installs it into .tools/)"
    return found


def readme_example() -> str:
    text = (SDK / "README.md").read_text("utf-8")
    section = text.split("## In ten lines", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_readme_example_is_ten_lines() -> None:
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert len(lines) <= 10, lines


def test_a_venv_with_only_the_sdk_runs_the_readme_example(
    live_server: LiveServer, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    uv = _uv()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VIVIX_", "VIRTUAL_ENV", "UV_"))
    }
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env
    )
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "--quiet", "--python", str(python), str(SDK)]
    # The locked wheels are in uv's cache already; the index is only a fallback.
    if subprocess.run([*install, "--offline"], env=env, check=False).returncode != 0:
        subprocess.run(install, env=env, check=True)
    installed = subprocess.run(
        [uv, "pip", "list", "--python", str(python), "--format", "freeze"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert {"vivix-client", "httpx", "pydantic"} <= names
    assert not names & {"vivix", "fastapi", "sqlalchemy", "starlette", "uvicorn", "rich"}, names

    account = live_server.account()
    example = tmp_path / "example.py"
    example.write_text(readme_example())
    result = subprocess.run(
        [str(python), str(example)],
        cwd=tmp_path,
        env={**env, "VIVIX_API_KEY": account.key, "VIVIX_BASE_URL": live_server.base_url},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "can run now:" in result.stdout
    assert "vivix-local-image" in result.stdout
    assert "completed" in result.stdout
    (saved,) = (tmp_path / "out").iterdir()
    with Image.open(saved) as image:
        image.load()
        assert image.width > image.height  # 16:9
