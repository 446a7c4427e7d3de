"""Ingestion's catalogue policy: what is refused, what is kept, and with which quality."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from model.devices import DataType, DeviceProfile, MetricSpec
from model.readings import Quality, Reading, Source
from model.rejections import RejectReason
from pipeline.ingest import check_reading

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
PROFILE = DeviceProfile(
    device_id="fz-1",
    type_id="freezer",
    metrics={
        "temp": MetricSpec(name="temp", data_type=DataType.NUMBER, min=-40, max=20),
        "door_open": MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
        "cycles": MetricSpec(name="cycles", data_type=DataType.INTEGER),
        "mode": MetricSpec(name="mode", data_type=DataType.STRING),
    },
    inactivity_timeout_s=180,
)


def _reading(**metrics: float | int | bool | str) -> Reading:
    return Reading("acme", "fz-1", NOW, metrics, Source("test", "unit"))


def test_a_valid_reading_passes_unchanged() -> None:
    reading = _reading(temp=-18.5, door_open=False, cycles=3, mode="eco")
    verdict = check_reading(reading, PROFILE, NOW)
    assert verdict.rejection is None and verdict.reading is reading


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"humidity": 40.0}, RejectReason.UNKNOWN_METRIC),
        ({"temp": "cold"}, RejectReason.WRONG_TYPE),
        ({"temp": True}, RejectReason.WRONG_TYPE),  # a bool is not a number here
        ({"door_open": 1}, RejectReason.WRONG_TYPE),
        ({"cycles": 2.5}, RejectReason.WRONG_TYPE),
        ({"mode": 3}, RejectReason.WRONG_TYPE),
    ],
)
def test_refusals(metrics: dict[str, float | int | bool | str], reason: RejectReason) -> None:
    verdict = check_reading(_reading(**metrics), PROFILE, NOW)
    assert verdict.reading is None and verdict.rejection is not None
    assert verdict.rejection.reason is reason
    assert verdict.rejection.tenant_id == "acme" and verdict.rejection.device_id == "fz-1"


def test_unknown_device_and_tenant() -> None:
    assert check_reading(_reading(temp=1.0), None, NOW).rejection.reason is RejectReason.UNKNOWN_DEVICE  # type: ignore[union-attr]
    verdict = check_reading(_reading(temp=1.0), None, NOW, tenant_known=False)
    assert verdict.rejection is not None and verdict.rejection.reason is RejectReason.UNKNOWN_TENANT


def test_integral_float_is_an_integer() -> None:
    assert check_reading(_reading(cycles=4.0), PROFILE, NOW).reading is not None


@pytest.mark.parametrize("temp", [25.0, -41.0])
def test_out_of_range_is_kept_as_uncertain(temp: float) -> None:
    verdict = check_reading(_reading(temp=temp, door_open=True), PROFILE, NOW)
    assert verdict.rejection is None and verdict.reading is not None
    assert verdict.reading.quality is Quality.UNCERTAIN
    assert verdict.reading.metrics == {"temp": temp, "door_open": True}


def test_reading_refuses_naive_timestamps_and_non_finite_values() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Reading("acme", "fz-1", datetime(2026, 1, 1), {"temp": 1.0}, Source("t", "t"))
    with pytest.raises(ValueError, match="finite"):
        Reading("acme", "fz-1", NOW, {"temp": float("nan")}, Source("t", "t"))
