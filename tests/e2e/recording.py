"""Helpers for the security tests: a raw recording upstream, a raw HTTP/1.1 client, the reference normalisation of
paths and hosts (contract section 9), and runners for ``phantom-token authz`` and a plain nginx reverse proxy.

- ``RecordingUpstream``: a threaded socket server on 127.0.0.1 that records the exact bytes each connection
  receives, splits them into requests itself (Content-Length or chunked framing, so keep-alive works and a
  smuggled second request shows up as a second request) and answers each with ``respond(request)``: raw bytes, or
  an iterable of raw chunks (an endless body, to see when the gateway gives up on a client). Every socket operation
  is bounded by a timeout; ``wait_for`` awaits a condition (no sleeps).
- ``read_response``: one response from a socket, framed as RFC 9112 section 6.3 says (so a response that the client
  could only read until close is told apart from a framed one).
- ``normalise_path``/``normalise_host``: what the fixed gateway matches on, written from the contract, used as the
  oracle of the table-driven tests; ``lenient_view`` is how a permissive upstream would read a forwarded target
  (every percent-encoding decoded, backslashes as slashes, dot segments removed, slashes merged).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import INTROSPECTION_CLIENT, STOP_TIMEOUT, Process, free_port, start_process

IO_TIMEOUT = 10.0

# --- the recording upstream -----------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the upstream parsed it from the bytes it received."""

    request_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes  # head and body exactly as received

    @property
    def method(self) -> bytes:
        return self.request_line.split(b" ")[0]

    @property
    def target(self) -> bytes:
        parts = self.request_line.split(b" ")
        return parts[1] if len(parts) > 1 else b""

    @property
    def path(self) -> str:
        """The target's path (an absolute-form target's too), without query or fragment."""
        target = self.target
        if not target.startswith(b"/") and b"://" in target:
            rest = target.split(b"://", 1)[1]
            target = b"/" + rest.partition(b"/")[2] if b"/" in rest else b"/"
        return target.partition(b"?")[0].partition(b"#")[0].decode("latin-1")

    @property
    def query(self) -> bytes | None:
        target = self.target
        return target.partition(b"?")[2] if b"?" in target else None

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        values = self.header_values(name)
        return values[0] if values else None


@dataclass
class RecordedConnection:
    raw: bytearray = field(default_factory=bytearray)
    requests: list[RecordedRequest] = field(default_factory=list)
    closed_by_peer: bool = False  # the gateway closed (or reset) this connection
    send_failed: bool = False  # writing a response failed (the gateway went away mid-response)
    parse_error: str | None = None
    done: bool = False


Responder = Callable[[RecordedRequest], bytes | Iterable[bytes]]


def ok_response(request: RecordedRequest) -> bytes:
    """The default answer: 200 with the request line as the body, framed with Content-Length."""
    body = b"upstream saw: " + request.request_line
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class _Framing(Exception):
    pass


class _Reader:
    """Buffered reads from a socket, keeping every byte received in ``record.raw``."""

    def __init__(self, sock: socket.socket, record: RecordedConnection) -> None:
        self.sock = sock
        self.record = record
        self.buffer = b""

    def fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        except TimeoutError:
            raise
        if not data:
            return False
        self.record.raw += data
        self.buffer += data
        return True

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self.fill():
                return None
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self.fill():
                raise _Framing("connection closed inside a body")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise _Framing(f"header line without a colon: {line!r}")
        headers.append((name, value.strip(b" \t")))
    return lines[0], headers


def _read_chunked(reader: _Reader) -> bytes:
    body = b""
    while True:
        size_line = reader.until(b"\r\n")
        if size_line is None:
            raise _Framing("connection closed inside a chunked body")
        size = int(size_line[:-2].split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers up to the empty line
                trailer = reader.until(b"\r\n")
                if trailer is None or trailer == b"\r\n":
                    return body
        body += reader.exactly(size)
        if reader.exactly(2) != b"\r\n":
            raise _Framing("chunk not followed by CRLF")


class RecordingUpstream:
    """A threaded raw HTTP/1.1 upstream on 127.0.0.1 that records what it receives (see the module docstring)."""

    def __init__(self, respond: Responder = ok_response) -> None:
        self.respond = respond
        self._lock = threading.Condition()
        self.connections: list[RecordedConnection] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept_loop, name="recording-upstream", daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- reading what was recorded

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for c in self.connections for r in c.requests]

    @property
    def raw(self) -> bytes:
        """Every byte received, all connections in order of their opening."""
        with self._lock:
            return b"".join(bytes(c.raw) for c in self.connections)

    def request_lines(self) -> list[bytes]:
        return [r.request_line for r in self.requests]

    def reset(self) -> None:
        with self._lock:
            self.connections = []

    def wait_for(self, condition: Callable[[], bool], timeout: float = IO_TIMEOUT) -> bool:
        """Await ``condition()`` (evaluated under the lock, re-evaluated on every event), bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.25))
        return True

    # -- serving

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = RecordedConnection()
            with self._lock:
                self.connections.append(record)
                self._sockets.append(sock)
                self._lock.notify_all()
            thread = threading.Thread(target=self._serve, args=(sock, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _event(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _serve(self, sock: socket.socket, record: RecordedConnection) -> None:
        sock.settimeout(30.0)
        reader = _Reader(sock, record)
        try:
            while not self._stopping.is_set():
                start = len(record.raw) - len(reader.buffer)
                head = reader.until(b"\r\n\r\n")
                if head is None:
                    record.closed_by_peer = True
                    return
                request_line, headers = parse_head(head[:-4])
                names = {name.lower(): value for name, value in headers}
                if b"transfer-encoding" in names:
                    body = _read_chunked(reader)
                elif b"content-length" in names:
                    body = reader.exactly(int(names[b"content-length"]))
                else:
                    body = b""
                consumed = len(record.raw) - len(reader.buffer)
                request = RecordedRequest(request_line, headers, body, bytes(record.raw[start:consumed]))
                with self._lock:
                    record.requests.append(request)
                    self._lock.notify_all()
                answer = self.respond(request)
                chunks = [answer] if isinstance(answer, bytes) else answer
                closes: bool | None = None
                try:
                    for chunk in chunks:
                        if closes is None:  # the first chunk holds the head: does it say Connection: close?
                            closes = b"\r\nconnection: close\r\n" in chunk.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
                        sock.sendall(chunk)
                except OSError:
                    record.send_failed = True
                    record.closed_by_peer = True
                    return
                if closes or names.get(b"connection", b"").lower() == b"close":
                    return
        except _Framing as exc:
            record.parse_error = str(exc)
        except (ValueError, TimeoutError, OSError) as exc:
            record.parse_error = f"{type(exc).__name__}: {exc}"
        finally:
            record.done = True
            with contextlib.suppress(OSError):
                sock.close()
            self._event()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def recording_upstream(respond: Responder = ok_response) -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(respond)
    try:
        yield server
    finally:
        server.stop()


# --- a raw client -----------------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str  # 'content-length', 'chunked', 'close' (read until the connection closed) or 'none' (no body)

    def header(self, name: str) -> bytes | None:
        wanted = name.lower().encode()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


class RawClient:
    """One client connection: send raw bytes, read framed responses, every operation bounded."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        self.buffer += data
        return True

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise EOFError(f"connection closed before {marker!r}; got {self.buffer[:300]!r}")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise EOFError("connection closed inside a body")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_response(self, method: bytes = b"GET") -> RawResponse:
        """One response (an interim 1xx other than 101 is skipped); framing as RFC 9112 section 6.3."""
        while True:
            head = self._until(b"\r\n\r\n")
            status_line, headers = parse_head(head)
            status = int(status_line.split(b" ")[1])
            if 100 <= status < 200 and status != 101:
                continue
            break
        names = {name.lower(): value for name, value in headers}
        if method == b"HEAD" or status in (101, 204, 304):
            return RawResponse(status, head, headers, b"", "none")
        if b"chunked" in names.get(b"transfer-encoding", b"").lower():
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0].strip(), 16)
                if size == 0:
                    while self._until(b"\r\n"):
                        pass
                    return RawResponse(status, head, headers, body, "chunked")
                body += self._exactly(size)
                self._exactly(2)
        if b"content-length" in names:
            return RawResponse(status, head, headers, self._exactly(int(names[b"content-length"])), "content-length")
        with contextlib.suppress(TimeoutError):
            while self._fill():
                pass
        body, self.buffer = self.buffer, b""
        return RawResponse(status, head, headers, body, "close")

    def closed_by_peer(self, timeout: float = IO_TIMEOUT) -> bool:
        return peer_closes(self.sock, timeout)


def peer_closes(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bool:
    """Whether the peer closes ``sock`` within ``timeout`` (data still arriving is read and dropped)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def exchange(port: int, data: bytes, timeout: float = IO_TIMEOUT) -> RawResponse | None:
    """Send ``data`` on a new connection and read one response; None when the connection closed without one."""
    with RawClient(port, timeout) as client:
        client.send(data)
        try:
            method = data.split(b" ", 1)[0]
            return client.read_response(method)
        except (EOFError, ValueError, IndexError):
            return None


# --- reference normalisation (contract section 9) ------------------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%(..)?", re.S)


class Refused(ValueError):
    """The fixed gateway answers this with 400."""


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    output: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./") or path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if output:
                output.pop()
        elif path == "/..":
            path = "/"
            if output:
                output.pop()
        elif path in (".", ".."):
            path = ""
        else:
            start = 1 if path.startswith("/") else 0
            end = path.find("/", start)
            end = len(path) if end < 0 else end
            output.append(path[:end])
            path = path[end:]
    return "".join(output)


def decode_path(path: str) -> str:
    """The percent-encoding step of the normalisation: unreserved characters decoded, other hex upper-cased;
    ``Refused`` for what the fixed gateway answers 400 (see ``normalise_path``)."""
    if "\\" in path:
        raise Refused("raw backslash")
    out = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "%":
            pair = path[i + 1 : i + 3]
            if len(pair) < 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise Refused("malformed percent-encoding")
            byte = int(pair, 16)
            if byte in (0x2F, 0x5C, 0x00):
                raise Refused("encoded slash, backslash or NUL")
            out.append(chr(byte) if byte in _UNRESERVED else "%" + pair.upper())
            i += 3
        else:
            out.append(char)
            i += 1
    decoded = "".join(out)
    for segment in decoded.split("/"):
        if segment.startswith((".;", "..;", ".%3B", "..%3B")):  # Tomcat and Jetty read "..;x" as ".."
            raise Refused("dot segment with parameters")
    return decoded


def merge_slashes(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def normalise_path(path: str, merge_first: bool = True) -> str:
    """The path the fixed gateway matches and forwards, or ``Refused``; ``path`` has no query string.
    ``merge_first``: merge repeated slashes before removing dot segments (as nginx does), else after."""
    decoded = decode_path(path)
    if merge_first:
        return remove_dot_segments(merge_slashes(decoded)) or "/"
    return merge_slashes(remove_dot_segments(decoded)) or "/"


def normal_forms(path: str) -> set[str]:
    """Every acceptable normalisation of ``path`` (the order of merging and dot removal is left open)."""
    return {normalise_path(path, True), normalise_path(path, False)}


def lenient_view(target: str) -> str:
    """How a permissive upstream could read a forwarded path: up to a ``#``, every percent-encoding decoded (once),
    backslashes as slashes, ``;`` parameters dropped from dot segments, dot segments removed, slashes merged."""
    path = target.partition("?")[0].partition("#")[0]
    path = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), path)
    path = path.replace("\\", "/")
    path = "/".join(re.sub(r"^(\.\.?);.*$", r"\1", seg) for seg in path.split("/"))
    path = re.sub(r"/{2,}", "/", path)
    return remove_dot_segments(path) or "/"


_REG_NAME = re.compile(r"[A-Za-z0-9\-._~]+")
_IPV4 = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")


def normalise_host(value: str) -> str:
    """The host the fixed gateway matches on (lower case, no trailing dot, no port), or ``Refused``."""
    if value == "":
        return ""
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise Refused("unclosed IPv6 literal")
        host, rest = value[: end + 1], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise Refused("junk after IPv6 literal")
            port = rest[1:]
        import ipaddress

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise Refused("bad IPv6 literal") from exc
    else:
        if ":" in value:
            host, port = value.rsplit(":", 1)
        if host.endswith("."):
            host = host[:-1]
        if not (_IPV4.fullmatch(host) or (_REG_NAME.fullmatch(host) and "" not in host.split("."))):
            raise Refused("not a host")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise Refused("bad port")
    return host.lower()


# --- configurations ---------------------------------------------------------------------------------------------


def plugin(auth_server_introspection: str, scope: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "introspection_endpoint": auth_server_introspection,
        "client_id": INTROSPECTION_CLIENT[0],
        "client_secret": INTROSPECTION_CLIENT[1],
        "token_cache_seconds": 300,
    }
    if scope is not None:
        config["scope"] = scope
    return {"name": "phantom-token", "config": config}


ADMIN_HOST = "admin.example.com"


def routed_config(introspection: str, upstream_url: str | None, **section: Any) -> str:
    """The routes that make the router's choice visible: ``/public`` and a catch-all ``/`` without the plugin,
    ``/admin`` and host ``admin.example.com`` needing scope ``admin``, ``/api`` needing any valid token. No
    ``strip_path``, so the path forwarded is the path matched. ``upstream_url`` None: for ``authz``."""
    service: dict[str, Any] = {"name": "recording"}
    if upstream_url is not None:
        service["url"] = upstream_url
    service["routes"] = [
        {"name": "public", "paths": ["/public"], "strip_path": False},
        {"name": "catch-all", "paths": ["/"], "strip_path": False},
        {"name": "admin", "paths": ["/admin"], "strip_path": False, "plugins": [plugin(introspection, "admin")]},
        {"name": "api", "paths": ["/api"], "strip_path": False, "plugins": [plugin(introspection)]},
        {"name": "admin-host", "hosts": [ADMIN_HOST], "strip_path": False,
         "plugins": [plugin(introspection, "admin")]},
    ]
    config: dict[str, Any] = {"_format_version": "2.1", "services": [service]}
    if section:
        config["phantom_token"] = section
    return yaml.safe_dump(config, sort_keys=False)


# --- phantom-token authz ----------------------------------------------------------------------------------------


def start_authz(config_text: str, work_dir: Path, logs: Path) -> Process:
    """``phantom-token authz`` with ``config_text`` on a free port (stopped by the caller)."""
    config = work_dir / f"authz-{free_port()}.yml"
    config.write_text(config_text, encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "phantom_token", "authz", "-c", str(config), "--listen", f"127.0.0.1:{port}"]
    return start_process("authz", argv, port, logs, {"INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]})


# --- plain nginx (the differential check) ---------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid {work}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@dataclass
class PlainNginx:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def start_plain_nginx(binary: str, upstream_port: int, work_dir: Path) -> PlainNginx:
    """nginx with ``location / { proxy_pass http://127.0.0.1:<upstream>; }``, ready when it accepts connections."""
    port = free_port()
    conf = work_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work_dir, port=port, upstream=upstream_port), encoding="utf-8")
    log_path = work_dir / "nginx.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "-p", str(work_dir), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=work_dir)
    nginx = PlainNginx(proc, port, log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited with {proc.returncode}:\n{nginx.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)  # between polls of a condition
            continue
        return nginx
    nginx.stop()
    pytest.fail(f"nginx did not listen within 20s:\n{nginx.log()}")
