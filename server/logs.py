"""Logging set-up: readable lines, and no secrets in access logs."""

from __future__ import annotations

import logging
import re

_SECRET_QUERY = re.compile(r"((?:access_token|k|token)=)[^&\s\"]+")


class RedactSecrets(logging.Filter):
    """Replace token-bearing query parameters in access-log lines with REDACTED.

    Browsers pass live-stream tokens as ``?access_token=`` and CoAP-like clients as ``?k=``;
    an access log must not become a list of working credentials.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1REDACTED", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = _SECRET_QUERY.sub(r"\1REDACTED", record.msg)
        return True


def install_redaction() -> None:
    """Attach the redaction filter to the access loggers (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
