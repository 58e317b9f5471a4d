"""The bad inputs of test_bad_inputs.py: files a case can point at, and the cases themselves
(a command line and the field its one-line error must name)."""

from __future__ import annotations

from dataclasses import dataclass

PROFILE = """\
name: tiny
description: a small valid profile that the bad ones below are variations of
prompt_tokens: {kind: uniform, min: 4, max: 16}
output_tokens: {kind: uniform, min: 2, max: 8}
arrival: {mode: closed, concurrency: 2}
slos:
  ttft_ms: {percentile: p90, max_ms: 5000}
objective: max_goodput
"""

# name -> file content; `{tmp}/NAME` in a case's argv points at it.
FILES: dict[str, str | bytes] = {
    "sweep_malformed.yaml": "batch_sizes: [1, 4\n",
    "sweep_binary.yaml": bytes(range(256)) * 4,
    "sweep_nul.yaml": "model: a\x00b\n",
    "sweep_list.yaml": "- batch_sizes\n- concurrency\n",
    "sweep_empty.yaml": "",
    "sweep_int_key.yaml": "1: 2\n",
    "sweep_unknown_key.yaml": "concurrency: [1]\nbatch_size: [4]\n",
    "sweep_wrong_type.yaml": "concurrency: [1]\nbatch_sizes: four\n",
    "sweep_zero_reps.yaml": "concurrency: [1]\nrepetitions: 0\n",
    "sweep_negative_requests.yaml": "concurrency: [1]\nrequests: -5\n",
    "sweep_bad_policy.yaml": "concurrency: [1]\npolicies: [fancy]\n",
    "sweep_inf_rate.yaml": "rate: [.inf]\n",
    "sweep_empty_loads.yaml": "concurrency: []\n",
    "sweep_server_cmd.yaml": "concurrency: [1]\nserver_cmd: 'serve --port {port} --bs {bs}'\n",
    "sweep_long_name.yaml": "concurrency: [1]\nname: " + "x" * 300 + "\n",
    "sweep_target_knobs.yaml": "max_wait_ms: [0]\n",
    "profile_malformed.yaml": "name: [tiny\n",
    "profile_binary.yaml": b"\xff\xfe\x00garbage",
    "profile_list.yaml": "- name\n",
    "profile_unknown_key.yaml": PROFILE + "colour: blue\n",
    "profile_wrong_type.yaml": PROFILE.replace("{kind: uniform, min: 4, max: 16}", "long"),
    "profile_negative_slo.yaml": PROFILE.replace("max_ms: 5000", "max_ms: -1"),
    "profile_inf_slo.yaml": PROFILE.replace("max_ms: 5000", "max_ms: .inf"),
    "profile_nan_slo.yaml": PROFILE.replace("max_ms: 5000", "max_ms: .nan"),
    "profile_bad_metric.yaml": PROFILE.replace("ttft_ms: {", "tttft_ms: {"),
    "profile_bad_percentile.yaml": PROFILE.replace("p90", "p42"),
    "profile_min_over_max.yaml": PROFILE.replace("min: 4, max: 16", "min: 16, max: 4"),
    "profile_huge_lengths.yaml": PROFILE.replace("max: 16", "max: 100000000000"),
    "profile_objective.yaml": PROFILE.replace("max_goodput", "min_cost"),
    "profile_zero_users.yaml": PROFILE.replace("concurrency: 2", "concurrency: 0"),
    "profile_html_name.yaml": PROFILE.replace("name: tiny", "name: '<script>x</script>'"),
    "profile_no_slos.yaml": PROFILE.replace("slos:\n  ttft_ms: {percentile: p90, max_ms: 5000}\n",
                                            "").replace("max_goodput", "max_throughput"),
    "exported_malformed.yaml": "engine: {policy: static\n",
    "exported_bad_policy.yaml": "engine: {model: m, policy: fancy, max_batch_size: 4, max_wait_ms: 0}\n",
    "exported_no_engine.yaml": "model: m\n",
    "not_a_db.db": "hello, I am not SQLite\n",
}


@dataclass(frozen=True)
class Case:
    """A command line (placeholders: {db} {newdb} {tmp} {dead} {busy} {newer} {live}) and the
    text the error line must contain: the field (option, YAML key) it names."""

    argv: str
    field: str


def c(argv: str, field: str) -> Case:
    return Case(argv, field)


SWEEP = "sweep --concurrency 1 --db {db}"
SWEEP_NEW = "sweep --concurrency 1 --db {newdb}"
# A bare external target batches by its own settings: no knob flags, unless a --server-cmd sets them.
TARGET = SWEEP + " --target"
SERVE_CMD = "serve --port {port} --max-num-seqs {batch_size}"
SEARCH = "search --concurrency --db {db}"

CASES: dict[str, Case] = {
    # -- trial flags ------------------------------------------------------------------------------
    "trial batch 0": c("trial --batch-size 0", "batch size"),
    "trial batch negative": c("trial --batch-size -2", "batch size"),
    "trial batch word": c("trial --batch-size four", "--batch-size"),
    "trial batch float": c("trial --batch-size 2.5", "--batch-size"),
    "trial concurrency 0": c("trial --concurrency 0", "--concurrency"),
    "trial rate 0": c("trial --rate 0", "--rate"),
    "trial rate negative": c("trial --rate -1", "--rate"),
    "trial rate nan": c("trial --rate nan", "--rate"),
    "trial rate inf": c("trial --rate inf", "--rate"),
    "trial burstiness 0": c("trial --rate 1 --burstiness 0", "--burstiness"),
    "trial wait negative": c("trial --max-wait-ms -5", "max wait"),
    "trial wait inf": c("trial --max-wait-ms inf", "max wait"),
    "trial policy": c("trial --policy dynamic", "policy"),
    "trial requests 0": c("trial --requests 0", "--requests"),
    "trial duration negative": c("trial --duration -1", "--duration"),
    "trial both loads": c("trial --concurrency 2 --rate 3", "not both"),
    "trial unknown profile": c("trial --profile nope", "unknown profile 'nope'"),
    "trial kv budget 0": c("trial --kv-budget 0", "KV budget"),
    "trial device": c("trial --device tpu", "device"),
    "trial dtype": c("trial --dtype float8", "dtype"),
    "trial unknown option": c("trial --batchsize 4", "--batchsize"),
    "trial target not http": c("trial --target ftp://x/v1", "--target"),
    "trial target down": c("trial --target {dead} --target-model foo/bar", "--target"),
    "trial api key unset": c("trial --target {dead} --api-key-env TRADEOFF_TEST_NO_SUCH_KEY",
                             "--api-key-env"),
    "trial tokenizer offline": c("trial --target {live} --target-model foo/bar", "foo/bar"),
    "trial target knob label": c("trial --target {live} --policy adaptive", "--policy describes"),
    "trial target batch label": c("trial --target {live} --batch-size 8 --max-wait-ms 0",
                                  "--batch-size/--max-wait-ms describe"),
    "trial target exported": c("trial --target {live} --config {tmp}/exported_bad_policy.yaml",
                               "--config describes"),
    "trial exported missing": c("trial --config {tmp}/nope.yaml", "--config"),
    "trial exported malformed": c("trial --config {tmp}/exported_malformed.yaml", "--config"),
    "trial exported policy": c("trial --config {tmp}/exported_bad_policy.yaml", "engine.policy"),
    "trial exported no engine": c("trial --config {tmp}/exported_no_engine.yaml", "engine"),
    # -- sweep flags (nothing may reach the db) ---------------------------------------------------
    "sweep batches empty": c(SWEEP + " --batch-sizes ''", "--batch-sizes"),
    "sweep batches hole": c(SWEEP + " --batch-sizes 1,,4", "--batch-sizes"),
    "sweep batches word": c(SWEEP + " --batch-sizes 1,x", "--batch-sizes"),
    "sweep batches float": c(SWEEP + " --batch-sizes 1e3", "--batch-sizes"),
    "sweep batches 0": c(SWEEP + " --batch-sizes 0,4", "batch_sizes"),
    "sweep wait negative": c(SWEEP + " --max-wait-ms -1", "max_wait_ms"),
    "sweep wait inf": c(SWEEP + " --max-wait-ms inf", "max_wait_ms"),
    "sweep concurrency 0": c(SWEEP + " --concurrency 0", "concurrency"),
    "sweep rate inf": c("sweep --rate inf --db {db}", "rate"),
    "sweep rate and users": c(SWEEP + " --rate 2", "exactly one of concurrency"),
    "sweep no load": c("sweep --db {db}", "exactly one of concurrency"),
    "sweep policy": c(SWEEP + " --policy static,fancy", "policies"),
    "sweep profile": c(SWEEP + " --profile nope", "unknown profile 'nope'"),
    "sweep requests 0": c(SWEEP + " --requests 0", "requests"),
    "sweep repetitions 0": c(SWEEP + " --repetitions 0", "repetitions"),
    "sweep repetitions 1000": c(SWEEP + " --repetitions 1000", "repetitions"),
    "sweep burstiness 0": c("sweep --rate 1 --burstiness 0 --db {db}", "burstiness"),
    "sweep kv budget 0": c(SWEEP + " --kv-budget 0", "kv_budget_tokens"),
    "sweep long name": c(SWEEP + " --name " + "n" * 201, "name"),
    "sweep api key env name": c(TARGET + " {dead} --api-key-env 1BAD", "api_key_env"),
    "sweep api key unset": c(TARGET + " {dead} --api-key-env TRADEOFF_TEST_NO_SUCH_KEY",
                             "--api-key-env"),
    "sweep target not http": c(TARGET + " ftp://x/v1", "target"),
    "sweep target down": c(TARGET + " {dead}", "--target"),
    "sweep target grid": c(SWEEP + " --target {dead} --batch-sizes 1,4", "server-cmd"),
    "sweep target knob label": c(SWEEP + " --target {dead} --policy adaptive", "--policy describes"),
    "sweep target knob yaml": c(SWEEP + " --target {dead} --config {tmp}/sweep_target_knobs.yaml",
                                "--max-wait-ms describes"),
    "sweep server-cmd placeholder": c(SWEEP + " --target {dead} --server-cmd 'x {{nosuch}}'",
                                      "{nosuch}"),
    "sweep server-cmd positional": c(SWEEP + " --server-cmd 'x {{}} {{port}}'", "server_cmd"),
    "sweep server-cmd quoting": c(SWEEP + " --server-cmd \"x --port {{port}} 'open\"",
                                  "server_cmd"),
    "sweep server-cmd no port": c(SWEEP + " --server-cmd 'vllm serve m'", "{port}"),
    "sweep server-cmd empty": c(SWEEP + " --server-cmd ''", "server_cmd"),
    "sweep server-cmd brace": c(SWEEP + " --server-cmd 'x --port {{port}} {{'", "server_cmd"),
    "sweep tokenizer": c(SWEEP + f" --server-cmd '{SERVE_CMD}' --tokenizer builtin:nosuch".replace(
        "{", "{{").replace("}", "}}"), "builtin:nosuch"),
    "sweep unknown builtin": c(SWEEP + " --model builtin:huge", "builtin:huge"),
    "sweep device": c(SWEEP + " --device tpu", "device"),
    "sweep resume unknown": c("sweep --resume 42 --db {db}", "42"),
    "sweep new db bad flag": c(SWEEP_NEW + " --batch-sizes 0", "batch_sizes"),
    # -- sweep YAML (--config) --------------------------------------------------------------------
    "yaml missing": c("sweep --config {tmp}/nope.yaml --db {db}", "--config"),
    "yaml directory": c("sweep --config {tmp} --db {db}", "--config"),
    "yaml malformed": c("sweep --config {tmp}/sweep_malformed.yaml --db {db}", "--config"),
    "yaml binary": c("sweep --config {tmp}/sweep_binary.yaml --db {db}", "--config"),
    "yaml nul": c("sweep --config {tmp}/sweep_nul.yaml --db {db}", "--config"),
    "yaml list": c("sweep --config {tmp}/sweep_list.yaml --db {db}", "--config"),
    "yaml empty": c("sweep --config {tmp}/sweep_empty.yaml --db {db}", "--config"),
    "yaml int key": c("sweep --config {tmp}/sweep_int_key.yaml --db {db}", "--config"),
    "yaml unknown key": c("sweep --config {tmp}/sweep_unknown_key.yaml --db {db}", "batch_size"),
    "yaml wrong type": c("sweep --config {tmp}/sweep_wrong_type.yaml --db {db}", "batch_sizes"),
    "yaml repetitions 0": c("sweep --config {tmp}/sweep_zero_reps.yaml --db {db}", "repetitions"),
    "yaml requests negative": c("sweep --config {tmp}/sweep_negative_requests.yaml --db {db}",
                                "requests"),
    "yaml policy": c("sweep --config {tmp}/sweep_bad_policy.yaml --db {db}", "policies"),
    "yaml inf rate": c("sweep --config {tmp}/sweep_inf_rate.yaml --db {db}", "rate"),
    "yaml empty loads": c("sweep --config {tmp}/sweep_empty_loads.yaml --db {db}", "concurrency"),
    "yaml server_cmd": c("sweep --config {tmp}/sweep_server_cmd.yaml --db {db}", "{bs}"),
    "yaml long name": c("sweep --config {tmp}/sweep_long_name.yaml --db {db}", "name"),
    # -- profile YAML -----------------------------------------------------------------------------
    "profile missing": c(SWEEP + " --profile {tmp}/nope.yaml", "nope.yaml"),
    "profile malformed": c(SWEEP + " --profile {tmp}/profile_malformed.yaml", "profile_malformed"),
    "profile binary": c(SWEEP + " --profile {tmp}/profile_binary.yaml", "profile_binary"),
    "profile list": c(SWEEP + " --profile {tmp}/profile_list.yaml", "mapping"),
    "profile unknown key": c(SWEEP + " --profile {tmp}/profile_unknown_key.yaml", "colour"),
    "profile wrong type": c(SWEEP + " --profile {tmp}/profile_wrong_type.yaml", "prompt_tokens"),
    "profile negative slo": c(SWEEP + " --profile {tmp}/profile_negative_slo.yaml",
                              "slos.ttft_ms.max_ms"),
    "profile inf slo": c(SWEEP + " --profile {tmp}/profile_inf_slo.yaml", "slos.ttft_ms.max_ms"),
    "profile nan slo": c(SWEEP + " --profile {tmp}/profile_nan_slo.yaml", "slos.ttft_ms.max_ms"),
    "profile metric": c(SWEEP + " --profile {tmp}/profile_bad_metric.yaml", "tttft_ms"),
    "profile percentile": c(SWEEP + " --profile {tmp}/profile_bad_percentile.yaml", "percentile"),
    "profile min over max": c(SWEEP + " --profile {tmp}/profile_min_over_max.yaml",
                              "prompt_tokens"),
    "profile huge lengths": c(SWEEP + " --profile {tmp}/profile_huge_lengths.yaml",
                              "prompt_tokens.max"),
    "profile objective": c(SWEEP + " --profile {tmp}/profile_objective.yaml", "objective"),
    "profile zero users": c(SWEEP + " --profile {tmp}/profile_zero_users.yaml",
                            "arrival.concurrency"),
    "profile html name": c(SWEEP + " --profile {tmp}/profile_html_name.yaml", "name"),
    # -- db URLs ----------------------------------------------------------------------------------
    "db unknown dialect": c("sweeps --db foo://nowhere", "foo"),
    "db no driver": c("sweeps --db mysql://u@h/db", "driver"),
    "db not a url": c("sweeps --db notaurl", "notaurl"),
    "db postgres unreachable": c("sweeps --db postgresql+psycopg://u@127.0.0.1:1/x", "127.0.0.1"),
    "db missing file": c("sweeps --db {newdb}", "no database"),
    "db not sqlite": c("sweeps --db sqlite:///{tmp}/not_a_db.db", "not a database"),
    "db newer schema": c("sweeps --db {newer}", "upgrade tradeoff"),
    "db newer schema recommend": c("recommend --db {newer}", "upgrade tradeoff"),
    "db newer schema sweep": c("sweep --concurrency 1 --db {newer}", "upgrade tradeoff"),
    "db missing dir": c("sweep --concurrency 1 --db sqlite:////proc/tradeoff/t.db", "--db"),
    "db unwritable dir": c("sweep --concurrency 1 --db sqlite:////sys/tradeoff-test.db",
                           "not writable"),
    "db parent is a file": c("sweep --concurrency 1 --db sqlite:///{tmp}/not_a_db.db/t.db",
                             "--db"),
    "db sweep unknown dialect": c("sweep --concurrency 1 --db foo://nowhere", "foo"),
    # -- recommend, export, trials ----------------------------------------------------------------
    "recommend unknown profile": c("recommend --profile nosuch --db {db}", "chat"),
    "recommend sweep and unknown profile": c("recommend --sweep 1 --profile nosuch --db {db}",
                                             "--profile"),
    "recommend sweep and other profile": c("recommend --sweep 1 --profile rag --db {db}",
                                           "'chat'"),
    "recommend profile without sweeps": c("recommend --profile rag --db {db}",
                                          "profiles with sweeps here: chat"),
    "recommend format": c("recommend --format xml --db {db}", "--format"),
    "recommend sweep unknown": c("recommend --sweep 42 --db {db}", "42"),
    "recommend sweep word": c("recommend --sweep one --db {db}", "--sweep"),
    "export format": c("export --format pdf --db {db}", "--format"),
    "export unknown profile": c("export --profile nosuch --db {db}", "--profile"),
    "export output dir missing": c("export --output {tmp}/no/such/x.yaml --db {db}", "--output"),
    "export output is dir": c("export --output {tmp} --db {db}", "--output"),
    "trials unknown sweep": c("trials 42 --db {db}", "42"),
    "trials format": c("trials 1 --format xml --db {db}", "--format"),
    "trials id word": c("trials abc --db {db}", "sweep_id"),
    # -- serve and ui: host and port before anything starts ---------------------------------------
    "serve port too big": c("serve --port 70000", "--port"),
    "serve port 0": c("serve --port 0", "--port"),
    "serve port negative": c("serve --port -1", "--port"),
    "serve port in use": c("serve --port {busy}", "in use"),
    "serve host unknown": c("serve --host no-such-host.invalid", "--host"),
    "serve host foreign": c("serve --host 192.0.2.1", "--host"),
    "serve policy": c("serve --policy fancy", "policy"),
    "serve batch 0": c("serve --batch-size 0", "batch size"),
    "serve config missing": c("serve --config {tmp}/nope.yaml", "--config"),
    "ui port too big": c("ui --port 70000 --db {db}", "--port"),
    "ui port in use": c("ui --port {busy} --db {db}", "in use"),
    "ui host unknown": c("ui --host no-such-host.invalid --db {db}", "--host"),
    # -- search: the same order (validate, load the model, then write) ---------------------------
    "search budget 0": c("search --concurrency --budget-min 0 --db {db}", "--budget-min"),
    "search budget inf": c("search --concurrency --budget-min inf --db {db}", "--budget-min"),
    "search both loads": c("search --concurrency --rate --db {db}", "not both"),
    "search batches": c("search --concurrency --batch-sizes 0 --db {db}", "batch_sizes"),
    "search no slos": c("search --concurrency --profile {tmp}/profile_no_slos.yaml --db {db}",
                        "no SLOs"),
    "search model new db": c("search --concurrency --model builtin:huge --db {newdb}",
                             "builtin:huge"),
    "search newer db": c("search --concurrency --db {newer}", "upgrade tradeoff"),
    "search unwritable db": c("search --concurrency --db sqlite:////sys/tradeoff-test.db",
                              "not writable"),
    "search server-cmd no port": c(SEARCH + " --server-cmd 'vllm serve m'", "{port}"),
    "search server-cmd placeholder": c(SEARCH + " --server-cmd 'x --port {{port}} {{nosuch}}'",
                                       "{nosuch}"),
    "search server-cmd quoting": c(SEARCH + " --server-cmd \"x --port {{port}} 'open\"",
                                   "server_cmd"),
    "search server-cmd tokenizer": c(SEARCH + f" --server-cmd '{SERVE_CMD}' --tokenizer "
                                     "builtin:nosuch".replace("{", "{{").replace("}", "}}"),
                                     "builtin:nosuch"),
    "search target down": c(SEARCH + " --target {dead}", "--target"),
    "search target grid": c(SEARCH + " --target {dead} --batch-sizes 1,4", "server-cmd"),
    "search target knob label": c(SEARCH + " --target {dead} --max-wait-ms 0", "--max-wait-ms"),
    "search resume new budget 0": c("search --resume 1 --budget-min 0 --db {db}", "--budget-min"),
    "bench repeats 0": c("bench --repeats 0", "--repeats"),
    "bench repeats word": c("bench --repeats many", "--repeats"),
    "profiles unknown dialect": c("profiles --db foo://nowhere", "foo"),
    "worker unknown dialect": c("worker --db foo://nowhere", "foo"),
}
