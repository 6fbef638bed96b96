"""Logging set-up: plain text or one JSON object per line (``--log-format json``).

Nothing here adds request data to records: callers log fingerprints, never tokens or header values. An access
log record (``frontends.access_log``) carries its fields as ``access``; the JSON form writes them as members of
its object, the text form writes its message (the same fields as ``name=value``).

With the access log on, ``setup_logging`` also makes an ``AccessWriter`` (``access_writer``): it writes an access
line in exactly the form the handler would, to the same stream, without a ``logging`` record (making, formatting
and handling one is most of a line's cost, and there is one line per request). Without it (the ASGI middleware,
tests) lines go through ``logging`` as any record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO


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


class AccessWriter:
    """Writes access log lines to ``stream`` as the handler's formatter would (text or JSON), with the time's
    text made once a second."""

    def __init__(self, stream: TextIO, json_format: bool) -> None:
        self._stream = stream
        self._json = json_format
        self._second = -1
        self._stamp = ""

    def write(self, document: dict[str, object], text: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) if self._json
                           else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        millis = int((now - second) * 1000)
        if self._json:
            head = f'{{"time":"{self._stamp}.{millis:03d}Z","level":"info","logger":"{ACCESS_LOGGER}",'
            line = head + json.dumps(document, separators=(",", ":"))[1:]
        else:
            line = f"{self._stamp},{millis:03d} INFO {ACCESS_LOGGER}: {text}"
        self._stream.write(line + "\n")
        self._stream.flush()


access_writer: AccessWriter | None = None
"""Set by ``setup_logging`` when the access log is on."""


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
    # Neither format shows the thread or process of a record: not looking them up makes every record cheaper (an
    # access log line is one per request).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    global access_writer
    access_writer = AccessWriter(sys.stderr, log_format == "json") if access_log else None
