"""Run the real `cartback` command in child processes, as an operator would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

CARTBACK = [sys.executable, "-m", "cartback"]


def cartback_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CARTBACK_")}
    env["CARTBACK_DATABASE_URL"] = database_url
    # Logs reach their files as they are written, so tests can wait on a line.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cartback(
    args: list[str], env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CARTBACK, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=120
    )


def start_cartback(
    args: list[str], env: Mapping[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        [*CARTBACK, *args], env=dict(env), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    return process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
