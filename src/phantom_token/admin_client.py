"""A client of the admin listener, for ``phantom-token purge`` (stdlib HTTP; the admin listener is local).

Invariants: the token is read from stdin, never from the command line (``ps`` shows arguments); only its JSON
body carries it, to the admin listener; nothing here prints or logs it.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse

from phantom_token.addresses import display, parse_listen

TIMEOUT_SECONDS = 10.0


def admin_url_from(admin_listen: str) -> str:
    """The URL to reach a listener bound to ``admin_listen`` from this host (a wildcard bind means loopback)."""
    host, port = parse_listen(admin_listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return display(host, port)


def post_purge(admin_url: str, admin_token: str | None, document: dict[str, str]) -> tuple[int, object]:
    """POST ``document`` to ``<admin_url>/cache/purge``; the status and the decoded JSON answer."""
    parts = urllib.parse.urlsplit(admin_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"admin URL {admin_url!r} is not an http:// or https:// URL")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=TIMEOUT_SECONDS)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if admin_token:
        headers["Authorization"] = f"Bearer {admin_token}"
    try:
        connection.request("POST", parts.path.rstrip("/") + "/cache/purge", json.dumps(document), headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        answer: object = json.loads(body)
    except ValueError:
        answer = {"code": "unexpected_response", "message": body[:200].decode("utf-8", "replace")}
    return response.status, answer
