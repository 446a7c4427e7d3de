"""Building blocks shared by the request and response models of every router."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class RequestBody(BaseModel):
    """A request body: unknown fields (``tenant_id`` included) are refused, never ignored."""

    model_config = ConfigDict(extra="forbid")


class Resource(BaseModel):
    """A response body built from a domain record."""

    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class PageOut(BaseModel, Generic[T]):
    """One keyset page; pass ``next_cursor`` back as ``cursor`` for the next page."""

    items: list[T]
    next_cursor: str | None = Field(description="Cursor of the next page; null on the last page.")


def changes(body: BaseModel) -> dict[str, Any]:
    """The fields a PATCH body actually set."""
    return body.model_dump(exclude_unset=True)
