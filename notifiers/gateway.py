"""The one place that talks to Apprise: parse and check channel URLs, send, list channel kinds.

Channel URLs carry credentials (tokens in paths, passwords, API-key headers), so:

* what we show and log is ``preview()``: scheme and Apprise's privacy form of the host part,
  with path and query cut off (Apprise's own privacy form keeps paths and header values);
* Apprise's own log records pass through ``_Redactor``, which blanks every URL part we have seen
  (password, path segments, query values) and the path and query of any URL-looking text;
* Apprise's persistent storage is off (memory mode): nothing about a channel lands on disk.

``send`` is synchronous (Apprise's notify is); the delivery workers run it in their thread pool.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise

with warnings.catch_warnings():
    # Apprise's e-mail plugin imports the standard imghdr module (deprecated since 3.11) when it
    # is first loaded; import it here, once, so the warning never surfaces mid-delivery.
    warnings.simplefilter("ignore", DeprecationWarning)
    import imghdr  # noqa: F401

logger = logging.getLogger(__name__)

SERVICE_TIMEOUT_S = 20.0
MAX_URL_LENGTH = 2_000
_ASSET = apprise.AppriseAsset(
    storage_mode="memory", service_timeout=SERVICE_TIMEOUT_S, secure_logging=True, allow_templates=False
)
_URLISH = re.compile(r"\b([a-z][a-z0-9+.-]{1,15}://)([^\s/?#@]*@)?([^\s/?#]*)([^\s]*)", re.IGNORECASE)
_MIN_SECRET = 4  # shorter URL parts (ports, "json", "yes") are not worth redacting and too common


class ChannelUrlProblem(ValueError):
    """A channel URL that cannot be used, with a reason safe to show (the URL is never in it)."""


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A channel URL Apprise understood."""

    plugin: Any  # apprise's NotifyBase subclass instance
    service: str
    preview: str
    hosts: tuple[str, ...]


class _Redactor(logging.Filter):
    """Blank known secrets and URL paths/queries in Apprise's log records."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, url: str) -> None:
        parts = urlsplit(url)
        found = {url, parts.path, parts.query, unquote(parts.path)}
        if parts.password:
            found.add(parts.password)
            found.add(unquote(parts.password))
        found.update(segment for segment in parts.path.split("/"))
        found.update(value for _, value in parse_qsl(parts.query))
        with self._lock:
            self._secrets.update(s for s in found if len(s) >= _MIN_SECRET)

    def scrub(self, text: str) -> str:
        text = _URLISH.sub(lambda m: f"{m.group(1)}{'****@' if m.group(2) else ''}{m.group(3)}/…", text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "****")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        return True


_REDACTOR = _Redactor()
# urllib3 logs request lines (with the path) at DEBUG when Apprise posts to a webhook.
for _name in ("apprise", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_REDACTOR)


class _Captured(logging.Handler):
    """Collects Apprise's warnings of the current thread: the reason a send failed."""

    _local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        sink: list[str] | None = getattr(self._local, "sink", None)
        if sink is not None and record.levelno >= logging.WARNING:
            sink.append(_REDACTOR.scrub(record.getMessage()))

    @contextmanager
    def collecting(self) -> Iterator[list[str]]:
        sink: list[str] = []
        self._local.sink = sink
        try:
            yield sink
        finally:
            self._local.sink = None


_CAPTURE = _Captured(level=logging.WARNING)
logging.getLogger("apprise").addHandler(_CAPTURE)


def parse(url: str) -> ParsedUrl:
    """The plugin for ``url``; ChannelUrlProblem when Apprise does not accept it."""
    url = url.strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise ChannelUrlProblem(f"a channel URL has 1 to {MAX_URL_LENGTH} characters")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme:
        raise ChannelUrlProblem("not a URL: it needs a scheme such as mailto:// or json://")
    _REDACTOR.remember(url)
    plugin = apprise.Apprise.instantiate(url, asset=_ASSET, suppress_exceptions=True)
    if plugin is None:
        known = scheme in _schemes()
        raise ChannelUrlProblem(
            f"Apprise cannot use this {scheme}:// URL (a required part is missing or invalid)"
            if known
            else f"{scheme}:// is not a channel kind Apprise supports (see the channel kinds)"
        )
    hosts = tuple(
        h
        for h in (getattr(plugin, "host", None), getattr(plugin, "smtp_host", None))
        if isinstance(h, str) and h
    )
    return ParsedUrl(plugin, str(plugin.service_name), preview_of(plugin, scheme), hosts)


def preview_of(plugin: Any, scheme: str) -> str:
    """What may be shown of a channel URL: the scheme and the privacy form of the host part."""
    private = str(plugin.url(privacy=True))
    netloc = urlsplit(private).netloc
    has_more = bool(urlsplit(private).path.strip("/"))
    return f"{scheme}://{netloc}{'/…' if has_more else ''}"


def private_address_problem(host: str, *, resolve: bool = False) -> str | None:
    """Why ``host`` is loopback, private or link-local (None when it is not, or is unknown).

    With ``resolve``, a name is looked up and every address it has is checked (what a delivery
    does, so a name pointing at 127.0.0.1 cannot get around the check).
    """
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return f"{host} is a loopback name"
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return None
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return None  # unresolvable: the send fails on its own, with Apprise's reason
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if any(is_private_address(address) for address in addresses):
        return f"{host} is (or resolves to) a loopback, private or link-local address"
    return None


def is_private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local or unspecified: never a target unless the settings allow it."""
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def notify_type(kind: str, severity: str | None) -> str:
    """Apprise's message type (it picks colours and icons from it) for a notification."""
    if kind == "cleared":
        return str(apprise.NotifyType.SUCCESS.value)
    if severity in ("critical", "major"):
        return str(apprise.NotifyType.FAILURE.value)
    if severity in ("minor", "warning"):
        return str(apprise.NotifyType.WARNING.value)
    return str(apprise.NotifyType.INFO.value)


def send(plugin: Any, title: str, body: str, *, allow_private: bool, kind: str = "info") -> str | None:
    """Deliver one message through one URL; None on success, else the reason (secret-free)."""
    if not allow_private:
        for host in (getattr(plugin, "host", None), getattr(plugin, "smtp_host", None)):
            if isinstance(host, str) and host and (problem := private_address_problem(host, resolve=True)):
                return f"refused: {problem} (FLATGIGS_ALLOW_PRIVATE_WEBHOOKS is off)"
    with _CAPTURE.collecting() as reasons:
        try:
            ok = bool(plugin.notify(body=body or title, title=title, notify_type=kind))
        except Exception as exc:  # a plugin bug must not kill the worker; its text is scrubbed
            return _REDACTOR.scrub(f"{type(exc).__name__}: {exc}")[:500]
    if ok:
        return None
    return ("; ".join(reasons) or "the service did not accept the notification")[:500]


@lru_cache(maxsize=1)
def _details() -> dict[str, Any]:
    details: dict[str, Any] = apprise.Apprise(asset=_ASSET).details(show_requirements=True)
    return details


@lru_cache(maxsize=1)
def _schemes() -> frozenset[str]:
    found: set[str] = set()
    for schema in _details()["schemas"]:
        for key in ("protocols", "secure_protocols"):
            found.update(p.lower() for p in (schema.get(key) or ()))
    return frozenset(found)


def _token(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    values = spec.get("values")
    return {
        "name": name,
        "label": str(spec.get("name", name)),
        "type": str(spec.get("type", "string")),
        "required": bool(spec.get("required", False)),
        "private": bool(spec.get("private", False)),
        "default": spec.get("default") if isinstance(spec.get("default"), str | int | float | bool) else None,
        "values": sorted(str(v) for v in values)
        if isinstance(values, list | tuple | set | frozenset)
        else None,
    }


def channel_kinds() -> list[dict[str, Any]]:
    """Every channel kind this Apprise installation can deliver to, with its URL templates and
    fields, straight from Apprise's own description of its plugins."""
    kinds = []
    for schema in _details()["schemas"]:
        details = schema.get("details") or {}
        protocols = sorted({*(schema.get("protocols") or ()), *(schema.get("secure_protocols") or ())})
        if not protocols:
            continue
        kinds.append(
            {
                "service": str(schema.get("service_name")),
                "schemes": protocols,
                "setup_url": schema.get("setup_url"),
                "templates": [str(t) for t in details.get("templates") or ()],
                "tokens": [_token(n, s) for n, s in (details.get("tokens") or {}).items()],
                "args": [_token(n, s) for n, s in (details.get("args") or {}).items()],
            }
        )
    return sorted(kinds, key=lambda k: k["service"].lower())


def parse_all(urls: Sequence[str]) -> list[ParsedUrl]:
    """Parse several URLs (a channel's); the first problem raised names its position."""
    parsed = []
    for index, url in enumerate(urls):
        try:
            parsed.append(parse(url))
        except ChannelUrlProblem as exc:
            raise ChannelUrlProblem(f"urls[{index}]: {exc}") from exc
    return parsed
