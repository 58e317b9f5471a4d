"""Engine presets' argv, the knobs they lack, and /metrics parsing from canned Prometheus text."""

from __future__ import annotations

import http.server
import threading

import pytest

from common.records import TrialConfig
from common.vocab import ENGINES
from experiments.spec.grid import GridError, parse_spec
from experiments.targets.engines import EngineUnavailableError, preset
from experiments.targets.server_metrics import MetricsScraper, parse_gauges

PLAIN = TrialConfig("continuous", 16, 0.0, concurrency=4)
BUDGET = TrialConfig("continuous", 16, 0.0, concurrency=4, max_num_batched_tokens=512)


@pytest.mark.parametrize("name, config, expected", [
    ("vllm", PLAIN, ["vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "9000",
                     "--max-num-seqs", "16"]),
    ("vllm", BUDGET, ["vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "9000",
                      "--max-num-seqs", "16", "--max-num-batched-tokens", "512", "--enable-chunked-prefill"]),
    ("sglang", PLAIN, ["python3", "-m", "sglang.launch_server", "--model-path", "org/m", "--host",
                       "127.0.0.1", "--port", "9000", "--max-running-requests", "16",
                       "--chunked-prefill-size", "-1", "--enable-metrics"]),
    ("sglang", BUDGET, ["python3", "-m", "sglang.launch_server", "--model-path", "org/m", "--host",
                        "127.0.0.1", "--port", "9000", "--max-running-requests", "16",
                        "--chunked-prefill-size", "512", "--enable-metrics"]),
    ("tgi", BUDGET, ["text-generation-launcher", "--model-id", "org/m", "--hostname", "127.0.0.1",
                     "--port", "9000", "--max-batch-size", "16", "--max-batch-prefill-tokens", "512"]),
    ("llamacpp", BUDGET, ["llama-server", "-m", "org/m", "--host", "127.0.0.1", "--port", "9000",
                          "--parallel", "16", "--cont-batching", "--metrics", "--batch-size", "512"]),
])
def test_preset_argv_uses_each_engines_own_flags(name: str, config: TrialConfig, expected: list[str]):
    assert preset(name).argv("org/m", config, 9000) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_knobs_an_engine_lacks_are_refused_not_invented(engine: str):
    base = {"engine": engine, "model": "org/m", "concurrency": [4], "batch_sizes": [8]}
    with pytest.raises(GridError, match="no setting for max_wait_ms"):
        parse_spec({**base, "policies": ["continuous"], "max_wait_ms": [0, 10]})
    with pytest.raises(GridError, match="policies other than continuous"):
        parse_spec({**base, "policies": ["static", "continuous"], "max_wait_ms": [0]})
    spec = parse_spec({**base, "policies": ["continuous"], "max_wait_ms": [0],
                       "max_num_batched_tokens": [None, 512]})
    assert spec.is_external and spec.starts_servers and spec.num_trials == 2


def test_engine_excludes_a_server_command():
    with pytest.raises(GridError, match="drop server_cmd"):
        parse_spec({"engine": "vllm", "server_cmd": "x --port {port}", "concurrency": [1],
                    "policies": ["continuous"], "max_wait_ms": [0]})


def test_a_missing_engine_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    needle = (r"'vllm' is not on PATH; install it \(pip install vllm; on a CPU: .ci/vllm.sh\), "
              "or pass --engine-python")
    with pytest.raises(EngineUnavailableError, match=needle):
        preset("vllm").check_available()


VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="org/m"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="org/m"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="org/m"} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="org/m"} 12345.0
"""
SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="org/m"} 5.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="org/m"} 0.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="org/m"} 0.25
"""
TGI_TEXT = """\
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
# TYPE tgi_queue_size gauge
tgi_queue_size 2
# TYPE tgi_request_count counter
tgi_request_count 100
"""
LLAMACPP_TEXT = """\
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.5
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""


@pytest.mark.parametrize("engine, text, expected", [
    ("vllm", VLLM_TEXT, {"running": 7.0, "waiting": 3.0, "kv_usage": 0.42}),
    ("sglang", SGLANG_TEXT, {"running": 5.0, "waiting": 0.0, "kv_usage": 0.25,
                             "prefix_cache_hit_rate": None}),
    ("tgi", TGI_TEXT, {"running": 4.0, "waiting": 2.0, "kv_usage": None}),
    ("llamacpp", LLAMACPP_TEXT, {"running": 2.0, "waiting": 1.0, "kv_usage": 0.5}),
])
def test_gauges_parse_from_each_engines_metrics_text(engine: str, text: str, expected: dict):
    assert parse_gauges(text, preset(engine).gauges) == expected


def test_older_vllm_kv_gauge_and_label_sets_are_summed():
    text = ("# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"a\"} 0.1\n"
            "vllm:gpu_cache_usage_perc{model_name=\"b\"} 0.2\n")
    assert parse_gauges(text, preset("vllm").gauges)["kv_usage"] == pytest.approx(0.3)


def test_scraper_samples_a_real_metrics_endpoint_over_http():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            body = VLLM_TEXT.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with MetricsScraper(url, preset("vllm").gauges, interval_s=0.02) as scraper:
            for _ in range(500):  # at most ~5 s
                if len(scraper.samples) >= 3:
                    break
                threading.Event().wait(0.01)
    finally:
        server.shutdown()
    summary = scraper.summary()
    assert summary["stats"]["running"] == {"mean": 7.0, "max": 7.0}
    assert summary["stats"]["kv_usage"]["max"] == pytest.approx(0.42)
    assert len(summary["t_s"]) == len(summary["series"]["waiting"]) >= 3 and summary["scrape_errors"] == 0


def test_gauge_stats_are_of_the_samples_inside_the_trials_window():
    # The scraper starts before the load (client start-up) and ends after it: idle samples there
    # pulled a 4-user trial's running mean to 0.9-2.0 on vLLM.
    scraper = MetricsScraper("http://unused/metrics", preset("vllm").gauges)
    scraper.start_s = 100.0  # the monotonic time it started (set by __enter__)
    scraper.samples = [(t, {"running": r, "waiting": 0.0, "kv_usage": 0.1})
                       for t, r in ((0.0, 0.0), (0.5, 0.0), (1.0, 4.0), (1.5, 4.0), (2.0, 3.0), (2.5, 0.0))]
    everything = scraper.summary()["stats"]["running"]["mean"]
    windowed = scraper.summary((100.9, 102.1))
    assert everything == pytest.approx(11 / 6)
    assert windowed["stats"]["running"] == {"mean": pytest.approx(11 / 3), "max": 4.0}
    assert windowed["stats_samples"] == 3 and windowed["window_t_s"] == [0.9, 2.1]
    assert scraper.summary((200.0, 201.0))["stats_samples"] == 6  # nothing inside: all of them


def test_vllm_is_read_at_the_trials_ends_and_its_running_mean_is_littles_law():
    # vLLM's /metrics, scraped under load, stalled the client: read before and after only.
    reads = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            reads.append(self.path)
            body = ("# TYPE vllm:request_inference_time_seconds histogram\n"
                    f"vllm:request_inference_time_seconds_sum{{model_name=\"m\"}} {6.0 * (len(reads) - 1)}\n"
                    "vllm:num_requests_running{model_name=\"m\"} 0\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    vllm = preset("vllm")
    assert vllm.scrape_interval_s is None
    try:
        with MetricsScraper(f"http://127.0.0.1:{server.server_address[1]}/metrics", vllm.gauges,
                            vllm.counters, vllm.scrape_interval_s) as scraper:
            threading.Event().wait(0.3)  # the trial: nothing read meanwhile
            assert len(reads) == 1
    finally:
        server.shutdown()
    start = scraper.start_s
    summary = scraper.summary((start + 0.5, start + 2.5))  # 6 s of running over a 2 s window
    assert len(reads) == 2 and summary["counters"]["running_s"] == 6.0
    assert summary["stats"]["running"] == {"mean": pytest.approx(3.0), "max": None}
    assert summary["stats"]["waiting"] is None  # not sampled under load: unknown, not 0
    # The counter also holds warm-up and cooldown requests: the mean is over the span they ran in.
    busy = scraper.summary((start + 0.5, start + 2.5), (start + 0.0, start + 4.0))
    assert busy["stats"]["running"]["mean"] == pytest.approx(1.5)
    assert busy["busy_t_s"] == [0.0, 4.0] and busy["window_t_s"] == [0.5, 2.5]


def test_server_cmd_template_gets_the_budget_placeholder():
    from experiments.targets.server_cmd import render_server_cmd

    template = "srv --port {port} --max-num-batched-tokens={max_num_batched_tokens}"
    assert render_server_cmd(template, BUDGET, 1)[-1] == "--max-num-batched-tokens=512"
    assert render_server_cmd(template, PLAIN, 1)[-1] == "--max-num-batched-tokens="  # none: empty
