"""Rules of a tenant and their immutable versions: save, publish, restore, diff, enable."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from engine.document import RuleDocument
from model.errors import ConflictError, NotFoundError
from model.ids import new_id
from storage.database import TenantScope
from storage.tables import rule_versions, rules
from storage.types import utcnow


class RuleStatus(StrEnum):
    """Where a rule stands, as the rules list shows it."""

    DRAFT = "draft"  # never published
    PUBLISHED = "published"  # a version runs
    DISABLED = "disabled"  # published but switched off
    INVALID = "invalid"  # no longer compiles (see invalid_reason); not running


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule's row: its pointers and status (documents live in versions)."""

    id: str
    name: str
    enabled: bool
    latest_version: int
    published_version: int | None
    invalid_reason: str | None
    last_fired_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def status(self) -> RuleStatus:
        """The status shown in lists."""
        if self.invalid_reason:
            return RuleStatus.INVALID
        if self.published_version is None:
            return RuleStatus.DRAFT
        return RuleStatus.PUBLISHED if self.enabled else RuleStatus.DISABLED


@dataclass(frozen=True, slots=True)
class RuleVersion:
    """One saved document of a rule."""

    rule_id: str
    version: int
    document: dict[str, Any]
    author: str
    comment: str
    created_at: datetime


def _rule(row: sa.Row[Any]) -> Rule:
    return Rule(
        row.id,
        row.name,
        row.enabled,
        row.latest_version,
        row.published_version,
        row.invalid_reason,
        row.last_fired_at,
        row.created_at,
        row.updated_at,
    )


def _version(row: sa.Row[Any]) -> RuleVersion:
    return RuleVersion(row.rule_id, row.version, dict(row.document), row.author, row.comment, row.created_at)


def _dump(document: RuleDocument) -> dict[str, Any]:
    return document.model_dump(mode="json", by_alias=True)


class RuleRepository:
    """Rules of the scope's tenant. Every save is a new immutable version."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def create(
        self, document: RuleDocument, *, author: str, comment: str = ""
    ) -> tuple[Rule, RuleVersion]:
        """A new rule with version 1 as its draft."""
        now = utcnow()
        rule_id = new_id("rul")
        await self._scope.insert(
            rules,
            [
                {
                    "id": rule_id,
                    "name": document.name,
                    "enabled": document.enabled,
                    "latest_version": 1,
                    "published_version": None,
                    "invalid_reason": None,
                    "last_fired_at": None,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        await self._add_version(rule_id, 1, document, author, comment, now)
        return await self.get(rule_id), await self.version(rule_id, 1)

    async def save(
        self, rule_id: str, document: RuleDocument, *, base_version: int, author: str, comment: str = ""
    ) -> tuple[Rule, RuleVersion]:
        """Save a new version on top of ``base_version``; ConflictError if someone saved meanwhile."""
        now = utcnow()
        stmt = (
            self._scope.update(rules)
            .where(rules.c.id == rule_id, rules.c.latest_version == base_version)
            .values(latest_version=base_version + 1, name=document.name, updated_at=now)
        )
        if (await self._scope.conn.execute(stmt)).rowcount == 0:
            current = await self.get(rule_id)  # NotFoundError for an unknown rule
            raise ConflictError(
                f"version {base_version} is not the latest (it is {current.latest_version}); "
                "reload the rule and apply your change again",
                latest_version=current.latest_version,
            )
        try:
            await self._add_version(rule_id, base_version + 1, document, author, comment, now)
        except IntegrityError as exc:  # a concurrent save won the same version number
            raise ConflictError("the rule was saved concurrently; reload it") from exc
        return await self.get(rule_id), await self.version(rule_id, base_version + 1)

    async def _add_version(
        self, rule_id: str, version: int, document: RuleDocument, author: str, comment: str, at: datetime
    ) -> None:
        async with self._scope.conn.begin_nested():
            await self._scope.insert(
                rule_versions,
                [
                    {
                        "rule_id": rule_id,
                        "version": version,
                        "document": _dump(document),
                        "author": author[:80],
                        "comment": comment[:500],
                        "created_at": at,
                    }
                ],
            )

    async def get(self, rule_id: str) -> Rule:
        """The rule, or NotFoundError (also for another tenant's)."""
        row = (await self._scope.conn.execute(self._scope.select(rules).where(rules.c.id == rule_id))).first()
        if row is None:
            raise NotFoundError("rule", rule_id)
        return _rule(row)

    async def version(self, rule_id: str, version: int) -> RuleVersion:
        """One version of a rule."""
        stmt = self._scope.select(rule_versions).where(
            rule_versions.c.rule_id == rule_id, rule_versions.c.version == version
        )
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            await self.get(rule_id)
            raise NotFoundError("rule version", f"{rule_id}@{version}")
        return _version(row)

    async def versions(self, rule_id: str) -> list[RuleVersion]:
        """Every version, newest first."""
        await self.get(rule_id)
        stmt = (
            self._scope.select(rule_versions)
            .where(rule_versions.c.rule_id == rule_id)
            .order_by(rule_versions.c.version.desc())
        )
        return [_version(r) for r in await self._scope.conn.execute(stmt)]

    async def list(self, *, text: str | None = None) -> list[Rule]:
        """The tenant's rules by name (a tenant has hundreds or thousands, not millions)."""
        stmt = self._scope.select(rules).order_by(rules.c.name, rules.c.id)
        if text:
            stmt = stmt.where(sa.func.lower(rules.c.name).contains(text.lower(), autoescape=True))
        return [_rule(r) for r in await self._scope.conn.execute(stmt)]

    async def update(self, rule_id: str, values: Mapping[str, Any]) -> Rule:
        """Change publish pointer, enabled flag, invalid reason or last fired time."""
        stmt = (
            self._scope.update(rules).where(rules.c.id == rule_id).values({**values, "updated_at": utcnow()})
        )
        if (await self._scope.conn.execute(stmt)).rowcount == 0:
            raise NotFoundError("rule", rule_id)
        return await self.get(rule_id)

    async def touch_fired(self, rule_id: str, at: datetime) -> None:
        """Record when the rule last fired (a deleted rule is ignored: it fired before it went)."""
        await self._scope.conn.execute(
            self._scope.update(rules).where(rules.c.id == rule_id).values(last_fired_at=at)
        )

    async def publish(self, rule_id: str, version: int) -> Rule:
        """Make ``version`` the running one (it must exist)."""
        await self.version(rule_id, version)
        return await self.update(rule_id, {"published_version": version, "invalid_reason": None})

    async def restore(self, rule_id: str, version: int, *, author: str) -> tuple[Rule, RuleVersion]:
        """A new version whose document is that of ``version`` (history is never rewritten)."""
        old = await self.version(rule_id, version)
        current = await self.get(rule_id)
        document = RuleDocument.model_validate(old.document)
        return await self.save(
            rule_id,
            document,
            base_version=current.latest_version,
            author=author,
            comment=f"restore of version {version}",
        )

    async def delete(self, rule_id: str) -> None:
        """Remove a rule and its versions."""
        await self._scope.conn.execute(
            self._scope.delete(rule_versions).where(rule_versions.c.rule_id == rule_id)
        )
        if (
            await self._scope.conn.execute(self._scope.delete(rules).where(rules.c.id == rule_id))
        ).rowcount == 0:
            raise NotFoundError("rule", rule_id)

    async def published(self) -> builtins.list[tuple[Rule, RuleVersion]]:
        """Every enabled rule with its published version (for the engine's index)."""
        stmt = (
            self._scope.select(
                rules,
                *rules.c,
                *[
                    c
                    for c in rule_versions.c
                    if c.name in ("version", "document", "author", "comment", "rule_id")
                ],
                rule_versions.c.created_at.label("version_created_at"),
            )
            .join(
                rule_versions,
                sa.and_(
                    rule_versions.c.tenant_id == rules.c.tenant_id,
                    rule_versions.c.rule_id == rules.c.id,
                    rule_versions.c.version == rules.c.published_version,
                ),
            )
            .where(rules.c.enabled.is_(True), rules.c.invalid_reason.is_(None))
        )
        found = []
        for row in await self._scope.conn.execute(stmt):
            rule = _rule(row)
            version = RuleVersion(
                row.rule_id, row.version, dict(row.document), row.author, row.comment, row.version_created_at
            )
            found.append((rule, version))
        return found


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Differences between two documents as ``{"path", "op": added|removed|changed, "old", "new"}``."""
    changes: list[dict[str, Any]] = []
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            child = f"{path}/{key}" if path else str(key)
            if key not in old:
                changes.append({"path": child, "op": "added", "new": new[key]})
            elif key not in new:
                changes.append({"path": child, "op": "removed", "old": old[key]})
            else:
                changes.extend(diff(old[key], new[key], child))
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            child = f"{path}/{i}"
            if i >= len(old):
                changes.append({"path": child, "op": "added", "new": new[i]})
            elif i >= len(new):
                changes.append({"path": child, "op": "removed", "old": old[i]})
            else:
                changes.extend(diff(old[i], new[i], child))
    elif old != new:
        changes.append({"path": path, "op": "changed", "old": old, "new": new})
    return changes
