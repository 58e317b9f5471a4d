"""`tradeoff serve --replicas 2`: one OpenAI-compatible endpoint over two replica processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_with_two_replicas_answers_and_stops_them_on_sigterm():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--replicas", "2",
                             "--router", "round_robin", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2, "two replica processes"
        body = {"model": "builtin:tiny", "prompt": "hello", "max_tokens": 5, "ignore_eos": True}
        for _ in range(4):
            out = httpx.post(f"{base}/v1/completions", json=body, timeout=30).json()
            assert out["usage"]["completion_tokens"] == 5
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True},
                          timeout=30) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert "tradeoff" in httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert psutil.wait_procs(children, timeout=20)[1] == []


@pytest.mark.slow
def test_serve_with_prefix_caching_reports_cached_prompt_tokens_in_usage():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--prefix-caching", "on",
                             "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        # 40 tokens, sent twice: the second reuses the 2 whole blocks before its last token.
        body = {"model": "builtin:tiny", "prompt": list(range(65, 105)), "max_tokens": 3,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        cached = []
        for _ in range(2):
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as resp:
                lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
            usage = json.loads(lines[-1][len("data: "):])["usage"]
            cached.append(usage["prompt_tokens_details"]["cached_tokens"])
        assert cached == [0, 32]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
