"""The access log (``phantom_token.access_log``, ``--access-log``): one line per answered request.

Each line carries: the time (the log record's), the front door (``serve``, ``authz``), the route's name (``-`` for
none), the method, the normalised path WITHOUT the query string, the status, the outcome (``allowed``, the
denial's code such as ``unauthorized`` or ``bad_gateway``, ``refused`` for what the connection core answered
itself, ``aborted`` for an upstream that failed mid-response), the token's fingerprint (``core.bearer.fingerprint``;
``-`` when the request carried no token the engine read), the durations in milliseconds (total; introspection:
time awaiting the engine's asynchronous path, 0 on a cache hit; upstream: from forwarding to the response's end,
``serve`` only) and the request id. Lines go to the ``phantom_token.access`` logger, through the process's log
set-up (``phantom_token.log``: text, or one JSON object per line with ``--log-format json``, the fields as members).

Invariants:
- Never a token, a JWT, a query string or a header value other than a valid request id: the fingerprint is the
  only trace of a token, computed once per token per connection (kept in the connection's ``TokenMemo``).
- A client's ``X-Request-Id`` is used only when it is one header of at most 128 characters from
  ``[A-Za-z0-9._:-]``; otherwise a new one (16 random hex digits) replaces it, so no header value can inject
  anything into a line. New ids come from a ``random.Random`` seeded from ``os.urandom`` (again in every forked
  worker), not a system call per request: they must be unique, not secret.
- The route's name, the method and the path are written as they are when made of safe characters and as a JSON
  string otherwise (the other fields are safe by construction), so one request is always one line.
- Nothing here runs when the access log is off: the front doors test one boolean per request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from typing import Final

from phantom_token import log
from phantom_token.core.bearer import fingerprint
from phantom_token.core.request import TokenMemo

ACCESS_LOGGER: Final = logging.getLogger("phantom_token.access")
REQUEST_ID_HEADER: Final = "x-request-id"
MAX_REQUEST_ID: Final = 128
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PLAIN: Final = re.compile(r"[A-Za-z0-9._:/~%!$&'()*+,;=@-]+")  # written bare in a text line; anything else quoted
NO_VALUE: Final = "-"


def valid_request_id(value: str) -> bool:
    """Whether a client's ``X-Request-Id`` value may be used (and logged) as it is."""
    return len(value) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(value) is not None


_random = random.Random(os.urandom(16))


def _reseed() -> None:
    _random.seed(os.urandom(16))


os.register_at_fork(after_in_child=_reseed)  # --workers: no two processes may share a sequence


def new_request_id() -> str:
    """A fresh request id: 16 hex digits (64 random bits)."""
    return f"{_random.getrandbits(64):016x}"


def request_id(headers: dict[str, list[str]]) -> tuple[str, bool]:
    """The request's id and whether it is the client's own (one valid ``X-Request-Id``); else a new one."""
    values = headers.get(REQUEST_ID_HEADER)
    if values is not None and len(values) == 1 and valid_request_id(values[0]):
        return values[0], True
    return new_request_id(), False


def token_fingerprint(memo: TokenMemo | None, headers: dict[str, list[str]]) -> str:
    """The fingerprint of the token this request carried, when the engine read one (its ``TokenMemo`` holds it),
    else ``-``. Computed once per token per connection."""
    if memo is None or not memo.token:
        return NO_VALUE
    values = headers.get("authorization")
    if values is None or len(values) != 1 or values[0] != memo.value:
        return NO_VALUE  # the memo holds an earlier request's token, not this one's
    if memo.fingerprinted is not memo.token:
        memo.fingerprint = fingerprint(memo.token)
        memo.fingerprinted = memo.token
    return memo.fingerprint


def fields(front_door: str, route: str | None, method: str, path: str, status: int, outcome: str, token: str,
           total_ms: float, introspection_ms: float, upstream_ms: float | None, request_id: str) -> dict[str, object]:
    """One line's fields, in order (``upstream_ms`` is None for ``authz``)."""
    document: dict[str, object] = {
        "front_door": front_door, "route": route if route is not None else NO_VALUE, "method": method or NO_VALUE,
        "path": path or NO_VALUE, "status": status, "outcome": outcome, "token": token,
        "total_ms": round(total_ms, 3), "introspection_ms": round(introspection_ms, 3),
    }
    if upstream_ms is not None:
        document["upstream_ms"] = round(upstream_ms, 3)
    document["request_id"] = request_id
    return document


def _text(value: object) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


# Fields whose values are safe by construction (numbers, codes, fingerprints, valid or generated request ids):
# written without the check. Only the route's name, the method and the path come from elsewhere.
_CHECKED: Final = ("route", "method", "path")


def text_line(document: dict[str, object]) -> str:
    """The text form: ``name=value`` pairs, a value with any other character than the safe ones JSON-quoted."""
    checked: dict[str, object] = {name: _text(document[name]) for name in _CHECKED if name in document}
    return " ".join([f"{name}={checked.get(name, value)}" for name, value in document.items()])


def write(document: dict[str, object]) -> None:
    """Log one line: the text form as the message, the fields as the record's ``access`` (JSON output uses them).
    The record is handed to the logger's handlers directly: ``Logger.info`` would also walk the stack to find the
    caller, which no access log line shows."""
    writer = log.access_writer
    if writer is not None:  # serve and authz: written as the handler would, without a record (phantom_token.log)
        writer.write(document, text_line(document))
        return
    logger = ACCESS_LOGGER
    if logger.isEnabledFor(logging.INFO):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, text_line(document), (), None,
                                   extra={"access": document})
        logger.handle(record)


__all__ = ["ACCESS_LOGGER", "new_request_id", "request_id", "text_line", "token_fingerprint", "valid_request_id",
           "write"]
