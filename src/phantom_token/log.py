"""Logging set-up: plain text or one JSON object per line (``--log-format json``).

Nothing here adds request data to records: callers log fingerprints, never tokens or header values. An access
log record (``frontends.access_log``) carries its fields as ``access``; the JSON form writes them as members of
its object, the text form writes its message (the same fields as ``name=value``).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):  # an access log line: its fields as members, not one string
            del document["message"]
            document.update(access)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, separators=(",", ":"))


ACCESS_LOGGER = "phantom_token.access"


def setup_logging(log_format: str = "text", level: str = "info", *, access_log: bool = False) -> None:
    """Log to stderr in ``log_format`` at ``level``. With ``access_log`` the access log's lines (INFO) are written
    whatever ``level`` is: they were asked for; without it that logger writes nothing."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
