"""The typed records of a trial's details: round trips, older shapes, unknown keys."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.details import (
    Attainment,
    ClientCheck,
    Drift,
    Prediction,
    PrefixCache,
    ProbeCalibration,
    Provenance,
    Refit,
    Rerun,
    Revision,
    SearchPlan,
    ServerMetrics,
    SpeedCheck,
    TimeSeries,
    Trace,
    TrialDetails,
)
from common.records import TrialMetrics, TrialRecord

PLAN = SearchPlan(start={"a": 2.0}, skipped={"b": "predicted 0.5"}, predicted={"a": 4.0, "b": 0.5},
                  predicted_value={"a": 10.0, "b": 1.0}, growth={"a": 1.5}, first="a",
                  cost_model={"decode_base_ms": 5.0}, calibration_predicted=3.0)
FULL = TrialDetails(
    timeseries=TimeSeries(1.0, [0.0, 1.0], [2.0, 3.0], [1.0, None], [0.0, 0.5], [1.0, 2.0]),
    trace=Trace("azure-conv", 2.0, 0.0, 60.0, 30.0, 100, 98, 1.0, 2048, 256,
                {"p50": 0.1, "p99": 0.5, "max": 1.0}, None),
    provenance=Provenance(node="vm", pid=7, device="cpu", device_name=None,
                          replicas={"replicas": 2, "placements": ["cpu", "cpu"], "router": "rr"},
                          engine={"name": "vllm", "version": "0.6", "command": "vllm serve"},
                          server_start_s=31.4, server_log="/logs/1.log", attempt=2),
    client=ClientCheck({"p50": 0.1}, {"p50": 0.2}, 1.0, 0.01, True, 1.0, 10.0, 0.1, 1,
                       extra={"uvloop": True}),
    attainment=Attainment(1.2, 40.0),
    server_metrics=ServerMetrics("http://h/metrics", 0.5, [0.0], {"running": [3.0]},
                                 {"running": {"mean": 3.0, "max": 3.0}}, 1, [0.0, 1.0],
                                 {"prefix_cache_hits": 5.0}, 0.5, 0),
    mean_batch_size_from="the server's gauge", prefix_cache_hit_rate_from="counters",
    prefix_cache=PrefixCache(30, 150, 2, 3, None),
    ttft_ms_by_turn={"1": {"p50": 10.0, "p90": 20.0, "count": 3}},
    prediction=Prediction(cost_model={"decode_base_ms": 5.0}, predicted={"ttft_ms_p50": 9.0},
                          error={"ttft_ms_p50": 0.1}, steps={"decode": [[1, 2, 0.01]]},
                          calibration=ProbeCalibration({"decode_base_ms": 5.0}, [{"x": 1}]),
                          refit=Refit({"a": 1}, {"a": 2}, {"num_trials": 3}, True, 3), plan=PLAN),
    revision=Revision(pruned={"b": "why"}, start={"c": 2.0}, growth={"c": 1.3}, order=["c"],
                      predicted={"c": 4.0}, cost_model={"decode_base_ms": 5.0}),
    speed_check=SpeedCheck(61.0, {"ttft_ms": 10.0}, None, {"ttft_ms": 10.0}),
    drift=Drift("drifted", {"ttft_ms": 10.0}), rerun=Rerun("measured again"),
)
PARTS = [FULL.timeseries, FULL.trace, FULL.provenance, FULL.client, FULL.attainment,
         FULL.server_metrics, FULL.prefix_cache, FULL.prediction, FULL.revision,
         FULL.speed_check, FULL.drift, FULL.rerun, PLAN, FULL.prediction.calibration,
         FULL.prediction.refit, FULL]


@pytest.mark.parametrize("record", PARTS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_its_dict(record):
    again = type(record).from_dict(record.to_dict())
    assert again == record and again.to_dict() == record.to_dict()


def test_keys_are_the_json_keys_and_optional_ones_are_left_out_when_unset():
    assert set(FULL.to_dict()) == {"timeseries", "trace", "provenance", "client", "attainment",
                                   "server_metrics", "mean_batch_size_from",
                                   "prefix_cache_hit_rate_from", "prefix_cache", "ttft_ms_by_turn",
                                   "prediction", "revision", "speed_check", "drift", "rerun"}
    assert FULL.to_dict()["client"]["uvloop"] is True  # the client's own facts, flat as before
    assert TrialDetails().to_dict() == {} and TrialDetails().is_empty()
    assert Provenance(node="vm", pid=1, device="cpu").to_dict() == {
        "node": "vm", "pid": 1, "device": "cpu", "device_name": None}
    # a failed plan: what the search runner always wrote, nothing more
    assert SearchPlan(failed="ValueError: x").to_dict() == {"start": {}, "skipped": {},
                                                            "failed": "ValueError: x"}
    assert Revision(pruned={"a": "why"}).to_dict() == {"pruned": {"a": "why"}}


def test_older_shapes_read_with_defaults_and_come_back_as_they_were():
    old = {"timeseries": {"window_s": 2.0, "t_s": [0.0]},  # before queue depth was stored
           "client": {"send_lag_ms": None, "limit_ms": 1.0},  # before the stall share
           "server_metrics": {"url": "u", "t_s": [], "series": {}, "stats": {}}}
    details = TrialDetails.from_dict(old)
    assert details.timeseries.queue_depth == [] and details.client.stalled_share is None
    assert details.server_metrics.counters == {} and details.server_metrics.window_t_s is None
    assert details.to_dict() == old  # reading never changes a stored row's shape
    assert TrialDetails.from_dict(None) == TrialDetails()


def test_unknown_keys_are_kept_at_every_level():
    stored = {"future": [1], "provenance": {"node": "n", "gpu_ids": ["0"], "rack": "r7"},
              "prediction": {"steps": {}, "new_fit": {"k": 1}, "plan": {"start": {}, "why": "x"}}}
    details = TrialDetails.from_dict(stored)
    assert details.extra == {"future": [1]} and details.provenance.extra == {"rack": "r7"}
    assert details.provenance.gpu_ids == ["0"] and details.prediction.plan.extra == {"why": "x"}
    assert details.to_dict() == stored


def test_a_revision_stored_under_the_prediction_is_read_where_it_lives_now():
    old = {"prediction": {"steps": {}, "revision": {"pruned": {"a": "why"}, "cost_model": {}}}}
    details = TrialDetails.from_dict(old)
    assert details.revision == Revision(pruned={"a": "why"}, cost_model={})
    assert "revision" not in details.prediction.to_dict()
    assert Revision.of({"a": "why"}) == Revision(pruned={"a": "why"})  # the bare pruned form
    assert not Revision() and Revision(order=["a"])


def test_records_take_a_stored_dict_and_hold_it_typed(make_metrics=None):
    record = TrialRecord(1, 1, None, "done", {}, details={"drift": {"reason": "slow"}})
    assert isinstance(record.details, TrialDetails) and record.details.drift_reason == "slow"
    assert TrialRecord(1, 1, None, "done", {}).details == TrialDetails()
    metrics = _metrics(details={"attainment": {"design_effect": 2.0, "effective_n": 5.0}})
    assert metrics.details.effective_n == 5.0
    out = replace(metrics, details=replace(metrics.details, rerun=Rerun("again"))).to_dict()
    assert out["details"] == {"attainment": {"design_effect": 2.0, "effective_n": 5.0},
                              "rerun": {"first_run": "again"}}
    assert "details" not in metrics.flat()


def _metrics(**kw) -> TrialMetrics:
    return TrialMetrics(1, 0, 1.0, 1.0, 1.0, 1.0, None, None, None, None, None, None, 1.0, 1.0,
                        None, None, False, **kw)
