"""How many streaming requests/s can one HttpTarget client sustain? (the issue asks >= 500)

Starts a minimal SSE server that answers instantly (a raw asyncio server in a child process, so
the server is never the bottleneck and does not share the client's GIL), then fires open-loop
Poisson arrivals at increasing rates through HttpTarget and prints, per rate: achieved req/s,
send lateness (sent - scheduled), the end-to-end latency the client adds (done - scheduled: the
server takes ~0), and the client's CPU time per request.

    .venv/bin/python scripts/bench_http_client.py [--rates 250,500,1000] [--duration-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.sequence import SamplingParams, SeqStatus, Sequence  # noqa: E402
from experiments.http_target import HttpTarget, wait_for_health  # noqa: E402

PROMPT_IDS = list(range(1, 33))


# -- the instant server (child process) ----------------------------------------------------------


def sse_body(num_tokens: int) -> bytes:
    """A whole completion stream: `num_tokens` chunks, usage, [DONE], chunked-encoded."""
    def chunk(i: int) -> dict:
        reason = "length" if i == num_tokens - 1 else None
        return {"id": "x", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": f" t{i}", "finish_reason": reason}]}

    usage = {"prompt_tokens": len(PROMPT_IDS), "completion_tokens": num_tokens,
             "total_tokens": len(PROMPT_IDS) + num_tokens}
    events = [json.dumps(chunk(i)) for i in range(num_tokens)]
    events.append(json.dumps({"id": "x", "object": "text_completion", "model": "m",
                              "choices": [], "usage": usage}))
    events.append("[DONE]")
    chunks = [f"data: {e}\n\n".encode() for e in events]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


class InstantServer(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every POST gets the canned stream, every GET a tiny JSON."""

    stream = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            length = _content_length(head)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(self._answer(head))

    def _answer(self, head: bytes) -> bytes:
        if head.startswith(b"post"):
            return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + self.stream)
        body = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)


def _content_length(head: bytes) -> int:
    idx = head.find(b"content-length:")
    return 0 if idx < 0 else int(head[idx + 15 :].split(b"\r\n", 1)[0])


async def _serve(port: int, num_tokens: int) -> None:
    InstantServer.stream = sse_body(num_tokens)
    server = await asyncio.get_running_loop().create_server(InstantServer, "127.0.0.1", port,
                                                            backlog=4096)
    await server.serve_forever()


# -- the client side -----------------------------------------------------------------------------


def run_rate(target: HttpTarget, rate: float, duration_s: float, seed: int) -> dict[str, float]:
    """Open-loop Poisson arrivals at `rate` for `duration_s`; stats over all requests."""
    rng = random.Random(seed)
    gaps = [rng.expovariate(rate) for _ in range(int(rate * duration_s))]
    done, all_done = [], threading.Event()

    def on_finish(seq: Sequence) -> None:
        done.append(seq)
        if len(done) == len(gaps):
            all_done.set()

    cpu0, start_s = time.process_time(), target.now() + 0.05
    _send(target, gaps, start_s, on_finish)
    all_done.wait(60.0 + duration_s)
    return _summary(done, len(gaps), time.process_time() - cpu0)


def _send(target: HttpTarget, gaps: list[float], start_s: float, on_finish: object) -> None:
    # Sleeps until each scheduled time; a late wake-up still stamps the intended time.
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    at_s = start_s
    for gap in gaps:
        at_s += gap
        time.sleep(max(0.0, at_s - target.now()))
        target.submit(PROMPT_IDS, params, scheduled_s=at_s, on_finish=on_finish)


def _summary(done: list[Sequence], num_sent: int, cpu_s: float) -> dict[str, float]:
    ok = [s for s in done if s.status is SeqStatus.FINISHED]
    span_s = max(s.done_s for s in ok) - min(s.scheduled_s for s in ok) if ok else float("nan")
    return {
        "achieved_rps": len(ok) / span_s if ok else 0.0,
        "errors": num_sent - len(ok),
        "send_late_ms_p99": _pct([s.sent_s - s.scheduled_s for s in ok], 99),
        "e2e_ms_p50": _pct([s.done_s - s.scheduled_s for s in ok], 50),
        "e2e_ms_p99": _pct([s.done_s - s.scheduled_s for s in ok], 99),
        "ttft_ms_p50": _pct([s.token_times_s[0] - s.scheduled_s for s in ok], 50),
        "cpu_ms_per_req": 1e3 * cpu_s / max(1, num_sent),
    }


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return float("nan")
    return 1e3 * statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    args = _args()
    if args.serve_port:
        asyncio.run(_serve(args.serve_port, args.num_tokens))
        return
    port = args.port
    server = subprocess.Popen([sys.executable, __file__, "--serve-port", str(port),
                               "--num-tokens", str(args.num_tokens)])
    try:
        wait_for_health(f"http://127.0.0.1:{port}/v1", timeout_s=10.0)
        _bench(f"http://127.0.0.1:{port}/v1", args)
    finally:
        server.terminate()
        server.wait()


def _bench(base_url: str, args: argparse.Namespace) -> None:
    print(f"instant SSE server, {args.num_tokens} tokens per response, "
          f"{args.duration_s:g} s per rate, Poisson arrivals")
    print(f"{'offered':>8} {'achieved':>9} {'errors':>6} {'late p99':>9} {'e2e p50':>8} "
          f"{'e2e p99':>8} {'ttft p50':>9} {'cpu/req':>8}   (ms)")
    with HttpTarget(base_url, model="m") as target:
        run_rate(target, 100, 1.0, seed=0)  # warm-up: open the pool's connections
        for i, rate in enumerate(args.rates):
            r = run_rate(target, rate, args.duration_s, seed=i + 1)
            print(f"{rate:8.0f} {r['achieved_rps']:9.1f} {r['errors']:6.0f} "
                  f"{r['send_late_ms_p99']:9.2f} {r['e2e_ms_p50']:8.2f} {r['e2e_ms_p99']:8.2f} "
                  f"{r['ttft_ms_p50']:9.2f} {r['cpu_ms_per_req']:8.3f}", flush=True)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[100, 250, 500, 750, 1000, 1500])
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--num-tokens", type=int, default=4)
    parser.add_argument("--port", type=int, default=18766)
    parser.add_argument("--serve-port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
