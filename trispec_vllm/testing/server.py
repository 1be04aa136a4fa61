"""Start and stop `trispec-vllm serve` processes on a free localhost port (tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# Server flags for the tiny test pair (fp32, short context, served as "tiny").
TINY_SERVER_ARGS = [
    "--dtype",
    "float32",
    "--max-model-len",
    "512",
    "--enforce-eager",
    "--served-model-name",
    "tiny",
]


def user_env(extra: dict | None = None) -> dict[str, str]:
    """This process's environment for a child that must run vLLM as a user does:
    without the test suite's in-process engine switch (tests/conftest.py)."""
    env = {**os.environ, **(extra or {})}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process; `argv` is what follows `trispec-vllm` (serve ...)."""

    def __init__(
        self, argv: list[str], log: Path, timeout: float = 240.0, env: dict | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = user_env(env)
        if "--kv-cache-memory-bytes" in argv:
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override the flag on CPU
        else:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        cmd = [
            sys.executable,
            "-m",
            "trispec_vllm.cli",
            *argv,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
