"""One request head as the server parsed it, and the rules that turn llhttp's pieces into it.

``index_headers`` and ``split_target`` run once per request head; everything here is pure except the bounded,
process-wide memos of header names and Host values (which hold no token: names, and valid Host values only).

Invariants:
- ``path`` is the normalised path and ``host`` the normalised host (``phantom_token.http.uri``); a target or Host
  that is not valid or is ambiguous raises ``Reject(400)``. An absolute-form target's authority wins over the Host
  header (RFC 9112 3.2.2).
- A header whose name holds ``_`` is ignored (nginx's ``underscores_in_headers off``): it is in ``raw_headers`` with
  ``""`` in ``lnames``, and nowhere in ``headers``.
- An upgrade request with a body raises ``Reject(400)``: llhttp stops at the head of an upgrade and never parses
  its body.
"""

from __future__ import annotations

from typing import Final

from phantom_token.http.messages import RawHeaders
from phantom_token.http.uri import InvalidTarget, normalise_host, normalise_path, plain_path_end, split_absolute
from phantom_token.memo import remember


class Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_NO_TOKENS: Final[frozenset[str]] = frozenset()  # one shared empty set: a head without Connection makes none


_NOT_INDEXED: Final[dict[str, list[str]]] = {}
_NOT_INDEXED_NAMES: Final[list[str]] = []


class RequestHead:
    """The parsed head of one request. ``headers`` maps lower-case names to every value (ISO-8859-1);
    ``lnames`` holds the lower-case name of each entry of ``raw_headers`` at the same index."""

    __slots__ = ("body_received", "chunked", "complete", "connection_tokens", "content_length", "early_body",
                 "expect_continue", "headers", "host", "http10", "keep_alive", "lnames", "method", "path",
                 "previous_raw", "query", "raw_headers", "raw_host", "raw_repeated", "target", "upgrade")

    def __init__(self, method: str, target: bytes, raw_headers: RawHeaders, keep_alive: bool, http10: bool) -> None:
        self.method = method
        self.target = target
        self.raw_headers = raw_headers
        self.keep_alive = keep_alive
        self.http10 = http10
        # Until ``index_headers`` gives the head its own (or the previous head's, shared: see there): empty, and
        # never changed (nothing but ``index_headers`` fills these in, and only containers it has just made).
        self.lnames: list[str] = _NOT_INDEXED_NAMES
        self.headers: dict[str, list[str]] = _NOT_INDEXED
        self.path = "/"
        self.query = ""
        self.host = ""
        self.raw_host = ""
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.connection_tokens = _NO_TOKENS
        self.upgrade = False  # Connection: upgrade with an Upgrade header (llhttp then stops at the head)
        self.early_body: list[bytes] | None = None  # body parsed while the request waited in the pipeline
        self.complete = False  # the whole request (head and body) has been received
        self.body_received = 0
        # Set by ``index_headers`` with the connection's memo: the previous head's own ``raw_headers`` list when
        # this head's raw headers are the same bytes, field by field, except perhaps the values of Authorization
        # fields at the same places (None otherwise), and whether they are all the same bytes. The proxy's request
        # memo takes these, after checking by identity that the list is the one its memo holds, instead of
        # comparing the fields a second time.
        self.previous_raw: RawHeaders | None = None
        self.raw_repeated = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def split_target(head: RequestHead) -> None:
    """The normalised path (``phantom_token.http.uri``: routes match it and it is what is forwarded) and the query
    string as received; for an absolute-form target also its authority, which wins over the Host header (RFC 9112
    3.2.2)."""
    target = head.target
    try:
        if target[:1] == b"/":
            end = plain_path_end(target)
            if end == len(target):
                head.path = target.decode("latin-1")
            elif end > 0:
                head.path = target[:end].decode("latin-1")
                head.query = target[end + 1 :].decode("latin-1")
            else:
                raw_path, _sep, raw_query = target.partition(b"?")
                head.path = normalise_path(raw_path.decode("latin-1"))
                head.query = raw_query.decode("latin-1")
            return
        if target == b"*":
            head.path = "*"
            return
        authority, host, rest = split_absolute(target.decode("latin-1"))
        path, _, query = rest.partition("?")
        head.path = normalise_path(path or "/")
        head.query = query
        head.raw_host = authority
        head.host = host
    except InvalidTarget as exc:
        raise Reject(400, exc.reason) from exc


def version_at(data: bytes, pos: int) -> int:
    """10 or 11 when ``data`` holds b" HTTP/1.0\\r" or b" HTTP/1.1\\r" at ``pos``; 0 otherwise.

    ``pos`` is where the request line's second space is when the line starts the read: ``len(method) + 1 +
    len(target)``, both as llhttp parsed them. That needs no search: a request line has single spaces and its
    method and target hold none, so the bytes match only where the line really has its version (after an empty line
    llhttp skipped, or when the line did not start the read or is not all in it, they do not, and the parser is
    asked instead)."""
    # byte by byte (compiled, an index is a C read; a slice would be a new bytes object)
    if (pos + 9 >= len(data) or data[pos] != 32 or data[pos + 1] != 72 or data[pos + 2] != 84
            or data[pos + 3] != 84 or data[pos + 4] != 80 or data[pos + 5] != 47 or data[pos + 6] != 49
            or data[pos + 7] != 46 or data[pos + 9] != 13):
        return 0
    minor = data[pos + 8]
    return 11 if minor == 49 else 10 if minor == 48 else 0  # b"1", b"0"


METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")}

# Header names as sent -> lower-case str. Clients send the same few names over and over; one lookup replaces a
# decode and a lower() per header. Bounded: a client inventing names only makes it start over.
_LNAMES: Final[dict[bytes, str]] = {}


def _lname(name: bytes) -> str:
    """The lower-case name, or "" for a name with ``_``: such headers are ignored as nginx ignores them by default
    (``underscores_in_headers off``), so ``X_Forwarded_Host`` can never alias a header the gateway sets for a
    framework that folds ``_`` into ``-``. They stay in ``raw_headers`` (at "" in ``lnames``) and nowhere else."""
    lname = name.decode("latin-1").lower()
    return remember(_LNAMES, name, "" if "_" in lname else lname, 1024)


class HeaderMemo:
    """What ``index_headers`` made of the previous request head on one connection, to skip the hashed memos when the
    next head repeats it (a keep-alive client sends the same names, in the same order, and the same Host): its raw
    headers and their lower-case names (the previous head's own lists, not copies), and its Host header value and
    what ``normalise_host`` made of it. Only ever that connection's own data, for the connection's life (the same
    bytes its ``TokenMemo`` and last ``RequestHead`` hold). Also the previous request's method as parsed and its
    name (``method_name``), which the connection compares before hashing fresh bytes for ``METHODS``."""

    __slots__ = ("framing", "headers", "host", "host_value", "lnames", "method", "method_str", "raw", "texts")

    def __init__(self) -> None:
        self.raw: RawHeaders = []
        self.lnames: list[str] = []
        # The previous head's mapping (None: none indexed yet) and whether a name had a framing header's length: a
        # head with the same raw headers takes both (``RequestHead.headers`` is never changed once indexed).
        self.headers: dict[str, list[str]] | None = None
        self.framing = False
        # The previous head's values as decoded, by position (None: an ignored name's, never decoded): a value equal
        # to the previous one at its place takes its string (a comparison of bytes instead of a decode and a new
        # string). The memo's own list, updated in place.
        self.texts: list[str | None] = []
        self.host_value: str | None = None  # None: no valid Host seen yet (never equal to a value)
        self.host = ""
        self.method = b""  # never a method llhttp parses
        self.method_str = ""


def method_name(method: bytes, memo: HeaderMemo | None = None) -> str:
    """The method's name as ``RequestHead.method`` holds it (the shared string of ``METHODS``, or decoded); with the
    connection's ``memo``, bytes equal to the previous request's method take its name without hashing them (a
    comparison of a few bytes instead of SipHash and a dict probe)."""
    if memo is not None and method == memo.method:
        return memo.method_str
    name = METHODS.get(method) or method.decode("ascii")
    if memo is not None:
        memo.method, memo.method_str = method, name
    return name


def index_headers(head: RequestHead, memo: HeaderMemo | None = None) -> None:
    """One pass over the raw headers for the lower-case mapping, then what framing and routing need from it.
    ``memo``: the connection's (``HeaderMemo``); a name equal to the previous head's at the same index takes its
    lower-case name, and a Host value equal to the previous one its normalised host: the same results as the
    process-wide memos give (pure functions of the bytes), without hashing the bytes. Raw headers that are the
    previous head's bytes, field by field, get the previous head's mapping and names (``headers`` and ``lnames``,
    shared: nothing changes them once indexed) instead of new ones built equal; when only Authorization values
    differ, the names and a copy of the mapping with its own ``authorization`` list. With the memo it also sets
    ``head.previous_raw`` and ``head.raw_repeated`` from the same comparisons."""
    raw_headers = head.raw_headers
    size = len(raw_headers)
    if memo is None:
        framing = _index(head, [], [], [], 0, 0, None)
    else:
        prev_raw = memo.raw
        prev_lnames = memo.lnames
        texts = memo.texts
        known_names = min(len(prev_raw), len(prev_lnames))
        if len(texts) < known_names:  # (min of three is a generic call when compiled; of two, a comparison)
            known_names = len(texts)
        start = -1  # the first field that is not the previous head's bytes (-1: none found yet)
        rest = 0  # the fields from the first whose names are the previous head's, and values too but Authorization's
        if size == len(prev_raw):
            while rest < known_names:
                name, value = raw_headers[rest]
                prev_name, prev_value = prev_raw[rest]
                if name != prev_name:
                    break
                if value != prev_value:
                    if prev_lnames[rest] != "authorization":
                        break
                    if start < 0:
                        start = rest
                rest += 1
        if start < 0:
            start = rest  # every field before it is the same bytes
        shared = memo.headers
        if rest == size and size == len(prev_raw) and shared is not None:
            if start == size:  # the same bytes: the same mapping
                head.headers = shared
                head.raw_repeated = True
            else:  # only Authorization values differ (a load balancer's connection): that list anew
                head.headers = _with_authorization(shared, raw_headers, prev_raw, prev_lnames, texts, start)
                memo.headers = head.headers
            head.lnames = prev_lnames
            head.previous_raw = prev_raw
            memo.raw = raw_headers
            framing = memo.framing
        else:
            framing = _index(head, prev_raw, prev_lnames, texts, known_names, start, memo)
    headers = head.headers
    hosts = headers.get("host")
    if hosts is not None:
        if len(hosts) > 1:
            raise Reject(400, "more than one Host header")
        host = head.raw_host = hosts[0]
        if memo is not None and host == memo.host_value:
            head.host = memo.host
        else:
            known = _HOSTS.get(host)
            if known is None:
                try:
                    known = remember(_HOSTS, host, normalise_host(host), 1024)
                except InvalidTarget as exc:
                    raise Reject(400, exc.reason) from exc
            head.host = known
            if memo is not None:
                memo.host_value, memo.host = host, known
    elif not head.http10:
        raise Reject(400, "missing Host header")
    if not framing:
        return
    length = headers.get("content-length")
    if length is not None:
        head.content_length = int(length[0])  # llhttp already checked digits-only and no duplicates
    if "transfer-encoding" in headers:
        head.chunked = True  # llhttp only accepts a request TE whose last coding is chunked
    expect = headers.get("expect")
    if expect is not None:
        # Other expectations are ignored (RFC 9110 10.1.1 allows it).
        head.expect_continue = expect[-1].strip().lower() == "100-continue" and not head.http10
    connection = headers.get("connection")
    if connection is not None:
        tokens = head.connection_tokens = frozenset(t.strip().lower() for value in connection for t in value.split(","))
        if "upgrade" in tokens and "upgrade" in headers:
            if head.chunked or head.content_length:
                # llhttp stops at the head of an upgrade and never parses its body: what follows would be taken
                # for the body by the upstream but not by us (and the request would wait for it forever)
                raise Reject(400, "upgrade request with a body")
            head.upgrade = True


def _with_authorization(shared: dict[str, list[str]], raw_headers: RawHeaders, prev_raw: RawHeaders,
                        prev_lnames: list[str], texts: list[str | None], start: int) -> dict[str, list[str]]:
    """The previous head's mapping for a head that differs from it only in Authorization values (from ``start``,
    the first field that differs): a copy with its own ``authorization`` list (the other lists are shared, as
    nothing changes them once indexed), each value taken from ``texts`` where its bytes repeat, else decoded."""
    headers = shared.copy()
    values: list[str] = []
    for i in range(len(raw_headers)):
        if prev_lnames[i] != "authorization":
            continue
        text = texts[i]
        if i >= start:
            value = raw_headers[i][1]
            if value != prev_raw[i][1] or text is None:
                text = value.decode("latin-1")
                texts[i] = text
        assert text is not None  # an Authorization field's text is always kept (its name is never ignored)
        values.append(text)
    headers["authorization"] = values
    return headers


def _index(head: RequestHead, prev_raw: RawHeaders, prev_lnames: list[str], texts: list[str | None], known_names: int,
           start: int, memo: HeaderMemo | None) -> bool:
    """``index_headers``' loop: ``head.headers`` and ``head.lnames`` filled in from the raw headers, the previous
    head's names and decoded values taken where the bytes repeat (``start``: the fields before it were found equal
    already). Whether some name has the length of content-length (14), transfer-encoding (17), expect (6) or
    connection (10): the framing look-ups are skipped when none has (a length test per name is cheaper than four
    look-ups per request; a name of such a length that is none of them only costs the look-ups)."""
    headers: dict[str, list[str]] = {}
    lnames: list[str] = []
    head.headers, head.lnames = headers, lnames
    raw_headers = head.raw_headers
    framing = False
    for i in range(len(raw_headers)):  # indexes: the compiled loop makes no iterator, and compares by position
        name, value = raw_headers[i]
        text: str | None = None
        lname: str | None
        if i < start:  # compared by the caller: the same bytes
            lname = prev_lnames[i]
            text = texts[i]
        elif i < known_names:
            prev_name, prev_value = prev_raw[i]
            lname = prev_lnames[i] if prev_name == name else _LNAMES.get(name)
            if prev_value == value:
                text = texts[i]
        else:
            lname = _LNAMES.get(name)
        if lname is None:
            lname = _lname(name)
        lnames.append(lname)
        if not lname:
            if i < len(texts):
                texts[i] = None
            else:
                texts.append(None)
            continue
        size = len(lname)
        if size == 14 or size == 17 or size == 6 or size == 10:
            framing = True
        if text is None:
            text = value.decode("latin-1")
            if i < len(texts):
                texts[i] = text
            else:
                texts.append(text)
        values = headers.get(lname)
        if values is None:
            headers[lname] = [text]
        else:
            values.append(text)
    if memo is not None:
        memo.raw, memo.lnames, memo.headers, memo.framing = raw_headers, lnames, headers, framing
    return framing


# Valid Host header values -> the host as routes compare it (``normalise_host``: lower case, no trailing dot, no
# port). Few distinct values; bounded like _LNAMES; an invalid value is never stored.
_HOSTS: Final[dict[str, str]] = {}


__all__ = ["METHODS", "HeaderMemo", "Reject", "RequestHead", "index_headers", "method_name", "split_target",
           "version_at"]
