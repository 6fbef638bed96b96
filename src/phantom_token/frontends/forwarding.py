"""What the proxy sends upstream and back, as pure functions of what was parsed (contract section 9).

- ``request_lines``: the request line and the client's header lines as forwarded, with the gateway's own framing.
- ``authorization_line`` + ``forwarding_lines``: ``Authorization``, ``Host`` and ``X-Forwarded-*`` as the gateway
  sets them, and the head's end (two pieces: the proxy remembers them apart, the first per token, the second per
  route and Host).
- ``rewrite_response_head``: the upstream's response head as the client receives it; ``switching_head`` for a 101.

Invariants:
- Hop-by-hop headers (RFC 9110 7.6.1) and those named in ``Connection`` are removed in both directions, but
  ``Connection`` never removes what the gateway sets or frames the message with: the request's ``Content-Length``
  or ``Transfer-Encoding: chunked`` is written from what the server parsed (never copied), as are ``Host``,
  ``Authorization`` and ``X-Forwarded-*``; a response keeps its ``Content-Length`` whatever its ``Connection`` says.
- Headers whose names hold ``_`` are never forwarded (the server ignores them: ``lnames`` has "" for them).
- Only a WebSocket upgrade is asked of the upstream (``tunnels``). Any other ``Upgrade`` (``h2c`` above all) is
  dropped like every hop-by-hop header: an upstream that switched to HTTP/2 would take requests on that connection
  that the gateway never sees, let alone decides ("h2c smuggling").
- The upstream sees exactly one ``Authorization`` header when the verdict carries one (every client one removed);
  on a route without the plugin the client's own goes through.
- On a route whose plugin sets ``claims_to_headers``, no client copy of those names goes upstream, whatever the
  verdict (``with_claim_headers``); only the engine's values do.
  on a route without the plugin the client's own goes through. The client's ``DPoP`` proof (RFC 9449) is removed
  with it, unless the route's plugin sets ``forward_dpop_proof``.
- No I/O, no state: the proxy keeps its memos (``frontends.proxy``) and calls these on a miss.
"""

from __future__ import annotations

from typing import Final

from phantom_token.config.settings import PluginConfig, Upstream
from phantom_token.http.client import head_fields
from phantom_token.http.request_head import RequestHead
from phantom_token.http.responses import status_line

HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"})
_HOP_BY_HOP_BYTES: Final = frozenset(name.encode() for name in HOP_BY_HOP)
# Request headers that need more than copying; everything else is copied byte for byte unless ``Connection`` names
# it. These never are: the gateway writes the framing (Content-Length, Transfer-Encoding), Host, Authorization and
# X-Forwarded-* itself, so a Connection token naming one of them is ignored. Expect is answered by the gateway. ""
# stands for every name with "_" (the server ignores those headers: http.request_head).
_SPECIAL: Final = HOP_BY_HOP | {"content-length", "host", "authorization", "expect", "x-forwarded-for",
                                "x-forwarded-proto", "x-forwarded-host", "dpop", ""}
# Response headers a Connection token cannot remove: the framing the client reads the body by.
_FRAMING_BYTES: Final = frozenset({b"content-length", b"transfer-encoding"})
# How a hop-by-hop header line starts in a lower-cased response head (llhttp allows no space before the colon).
_HOP_MARKERS: Final = tuple(b"\n" + name + b":" for name in sorted(_HOP_BY_HOP_BYTES))


def request_lines(head: RequestHead, target: bytes, authorization: str | None,
                  plugin: PluginConfig | None = None) -> tuple[list[bytes], bytes | None]:
    """The request line for ``target`` (the upstream path and query) and the client's header lines as forwarded,
    with the framing; and the client's ``X-Forwarded-For`` values joined (None when it sent none). The caller
    appends ``authorization_line`` and ``forwarding_lines`` and joins. ``plugin`` is the route's (its
    ``forward_dpop_proof``)."""
    parts = [head.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    tokens = head.connection_tokens
    forwarded_for: bytes | None = None
    raw_headers, lnames = head.raw_headers, head.lnames
    for i in range(len(raw_headers)):  # indexes, not zip(): the compiled loop then makes no iterator objects
        lname = lnames[i]
        if lname not in _SPECIAL:
            if lname not in tokens:
                name, value = raw_headers[i]
                parts.extend((name, b": ", value, b"\r\n"))
        elif lname == "authorization":
            if authorization is None:  # a route without the plugin: the client's own goes through
                name, value = raw_headers[i]
                parts.extend((name, b": ", value, b"\r\n"))
        elif lname == "x-forwarded-for":
            value = raw_headers[i][1]
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        elif lname == "dpop" and (authorization is None or (plugin is not None and plugin.forward_dpop_proof)):
            name, value = raw_headers[i]
            parts.extend((name, b": ", value, b"\r\n"))
    # The framing is the gateway's own, from what the server parsed (llhttp refused CL with TE and duplicates)
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % head.content_length)
    if head.upgrade and tunnels(head):  # asked again, hop by hop: the upstream may switch (an upgrade has no body)
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    return parts, forwarded_for


def with_request_id(request_head: bytes, request_id: bytes, own: bool) -> bytes:
    """``request_head`` (as built, ending with its empty line) with exactly one ``X-Request-Id``: unchanged when it
    is the client's own (``own``: one valid header, already among the lines), else every client copy removed and
    ``request_id`` added. Only the access log asks for it, so the usual path is one comparison."""
    if own:
        return request_head
    if b"x-request-id:" in request_head.lower():  # the client sent copies that were not usable: drop them all
        lines = request_head[:-4].split(b"\r\n")
        request_head = b"\r\n".join(line for line in lines if line[:13].lower() != b"x-request-id:") + b"\r\n\r\n"
    return request_head[:-2] + b"X-Request-Id: " + request_id + b"\r\n\r\n"


def with_claim_headers(request_head: bytes, lnames: list[str], names: frozenset[str], lines: bytes) -> bytes:
    """``request_head`` (as built, ending with its empty line) without any client copy of the ``claims_to_headers``
    ``names`` (lower case; ``lnames``: the client's header names, lower case) and with ``lines`` (``claim_lines``
    of the verdict's values) added. Only routes that configure claims headers come here."""
    if not names.isdisjoint(lnames):  # rare: the client sent one of them
        parts = request_head[:-4].split(b"\r\n")
        kept = [parts[0]] + [line for line in parts[1:]
                             if line.partition(b":")[0].lower().decode("latin-1") not in names]
        request_head = b"\r\n".join(kept) + b"\r\n\r\n"
    if not lines:
        return request_head
    return request_head[:-2] + lines + b"\r\n"


def claim_lines(headers: tuple[tuple[str, str], ...]) -> bytes:
    """The header lines of ``claims_to_headers`` values (wire strings: written byte for byte)."""
    return b"".join(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n" for name, value in headers)


def without_headers(request_head: bytes, headers: dict[str, list[str]], names: tuple[str, ...]) -> bytes:
    """``request_head`` (as built, ending with its empty line) without the header lines named ``names`` (lower
    case); unchanged, and not looked at, when the request (``headers``) has none of them."""
    if not any(name in headers for name in names):
        return request_head
    lines = request_head[:-4].split(b"\r\n")
    dropped = {name.encode("latin-1") for name in names}
    kept = [lines[0], *(line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in dropped)]
    return b"\r\n".join(kept) + b"\r\n\r\n"


def tunnels(head: RequestHead) -> bool:
    """Whether ``head`` asks for a WebSocket, the one upgrade the gateway forwards (see the module docstring)."""
    values = head.headers.get("upgrade")
    return head.upgrade and values is not None and len(values) == 1 and values[0].strip().lower() == "websocket"


def authorization_line(authorization: str | None, before: bytes = b"", after: bytes = b"") -> bytes:
    """The ``Authorization`` line of the verdict's value ("" when it carries none), the first of the gateway's own
    lines, between ``before`` and ``after`` in one join (the proxy puts it after the client's lines and before the
    rest of its own: one copy of a head that holds a JWT, not two). The caller has refused a value with CR or LF."""
    if authorization is None:
        return before + after
    return b"".join((before, b"Authorization: ", authorization.encode("latin-1"), b"\r\n", after))


def forwarding_lines(host: bytes, raw_host: bytes, client_ip: bytes, forwarded_for: bytes | None) -> bytes:
    """The gateway's own lines after ``Authorization``: ``Host``, ``X-Forwarded-For`` (the client's values, then its
    address), ``X-Forwarded-Proto``, ``X-Forwarded-Host`` (the Host the client sent, when it sent one) and the head's
    final empty line. They do not depend on the token, so a connection whose requests carry many tokens builds them
    once."""
    parts = [b"Host: %b\r\nX-Forwarded-For: %b\r\nX-Forwarded-Proto: http\r\n" % (
        host, forwarded_for + b", " + client_ip if forwarded_for else client_ip)]
    if raw_host:
        parts.extend((b"X-Forwarded-Host: ", raw_host, b"\r\n"))
    parts.append(b"\r\n")
    return b"".join(parts)


def host_header(upstream: Upstream) -> bytes:
    """The ``Host`` value for an upstream: its host, and its port unless the scheme's default."""
    default = 443 if upstream.scheme == "https" else 80
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return (host if upstream.port == default else f"{host}:{upstream.port}").encode("idna")


def rewrite_response_head(raw: bytes, status: int) -> tuple[bytes, bool, bool]:
    """The response head as sent to the client, without its final empty line: our status line, then the header
    lines as received (llhttp validated them) minus the hop-by-hop ones and those named in ``Connection`` (never
    Content-Length: ``Connection: Content-Length`` would leave a keep-alive client without a length). Also
    whether it has Content-Length, and whether it may be remembered (no Set-Cookie, small)."""
    low = raw.lower()
    length = b"\ncontent-length:" in low
    named: set[bytes] = set()
    cuts: list[tuple[int, int]] = []
    for marker in _HOP_MARKERS:
        at = low.find(marker)
        while at >= 0:
            line_end = low.find(b"\r\n", at) + 2
            cuts.append((at + 1, line_end))
            if marker == b"\nconnection:":
                named |= {token.strip() for token in low[at + 12:line_end - 2].split(b",")}
            at = low.find(marker, line_end - 1)
    named -= _HOP_BY_HOP_BYTES | _FRAMING_BYTES  # a Connection token never removes the framing
    parts = [status_line(status)]
    if named:  # rare: the upstream named further hop-by-hop headers in Connection
        for name, value in head_fields(raw):
            lname = name.lower()
            if lname not in _HOP_BY_HOP_BYTES and lname not in named:
                parts += (name, b": ", value, b"\r\n")
    else:
        pos = raw.find(b"\r\n") + 2
        for cut_start, cut_end in sorted(cuts):
            parts.append(raw[pos:cut_start])
            pos = cut_end
        parts.append(raw[pos:-2])
    return b"".join(parts), length, len(raw) <= 2048 and b"\nset-cookie:" not in low


def switching_head(raw: bytes) -> bytes:
    """The whole head sent to the client for the upstream's 101: rewritten as any other, with the hop-by-hop
    ``Connection: Upgrade`` and the ``Upgrade`` the upstream chose said again."""
    head, _, _ = rewrite_response_head(raw, 101)
    chosen = b", ".join(value for name, value in head_fields(raw) if name.lower() == b"upgrade")
    return head + b"Connection: Upgrade\r\nUpgrade: " + chosen + b"\r\n\r\n"


__all__ = ["HOP_BY_HOP", "authorization_line", "claim_lines", "forwarding_lines", "host_header",
           "request_lines", "rewrite_response_head", "switching_head", "tunnels", "with_claim_headers",
           "without_headers"]
