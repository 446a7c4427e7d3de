"""Device types, their metric catalogue, and devices as the rest of the platform sees them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from model.ids import LABEL_KEY_PATTERN, OBJECT_ID_PATTERN

METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]{0,62}$"


class DataType(StrEnum):
    """What kind of value a metric carries."""

    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    STRING = "string"


class DeviceStatus(StrEnum):
    """Connectivity of a device, fed by ingestion."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


class MetricSpec(BaseModel):
    """One entry of a device type's metric catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=METRIC_NAME_PATTERN, examples=["temp"])
    data_type: DataType = DataType.NUMBER
    unit: str = Field(default="", max_length=32, examples=["°C"])
    description: str = Field(default="", max_length=500)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if (self.min is not None or self.max is not None) and self.data_type not in (
            DataType.NUMBER,
            DataType.INTEGER,
        ):
            raise ValueError("a range only applies to number and integer metrics")
        return self


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device: its metric catalogue and how long it may stay silent."""

    id: str
    name: str
    description: str
    metrics: tuple[MetricSpec, ...]
    inactivity_timeout_s: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Device:
    """One registered device of a tenant."""

    id: str
    name: str
    type_id: str
    labels: dict[str, str]
    attributes: dict[str, Any]
    status: DeviceStatus
    last_seen_at: datetime | None
    status_changed_at: datetime | None
    created_at: datetime
    updated_at: datetime


ObjectId = Annotated[str, StringConstraints(pattern=OBJECT_ID_PATTERN)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
AttributeValue = str | int | float | bool | None
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=32)]
Attributes = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=63)], AttributeValue],
    Field(max_length=64),
]


class DeviceSpec(BaseModel):
    """A device to register, as the API and the bulk importer accept it."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectId
    type_id: ObjectId
    name: Name | None = None
    labels: Labels = {}
    attributes: Attributes = {}


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What ingestion needs to know about a device: its type's catalogue and silence timeout."""

    device_id: str
    type_id: str
    metrics: Mapping[str, MetricSpec]
    inactivity_timeout_s: int
    labels: Mapping[str, str] = field(default_factory=dict)
