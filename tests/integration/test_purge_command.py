"""``phantom-token purge``: reads the token from stdin, posts it to the admin listener with the admin token."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from phantom_token.cli import main

ADMIN_TOKEN = "admin-secret-value"


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str | None, bytes]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        answer = json.dumps({"fingerprint": "x", "complete": self.status == 200}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Path]:
    Recorder.seen, Recorder.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "gw.yml"
    config.write_text(
        "_format_version: '2.1'\n"
        f"phantom_token:\n  admin_listen: 127.0.0.1:{server.server_address[1]}\n  admin_token: {ADMIN_TOKEN}\n"
    )
    yield config
    server.shutdown()
    server.server_close()


def test_token_comes_from_stdin_and_goes_in_the_body(admin: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("opaque-token-123\n"))
    assert main(["purge", "-c", str(admin), "--token-stdin"]) == 0
    ((method, path, authorization, body),) = Recorder.seen
    assert (method, path, authorization) == ("POST", "/cache/purge", f"Bearer {ADMIN_TOKEN}")
    assert json.loads(body) == {"token": "opaque-token-123"}
    out = capsys.readouterr()
    assert "opaque-token-123" not in out.out + out.err
    assert json.loads(out.out)["complete"] is True


def test_token_sha256_and_a_failed_purge(admin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Recorder.status = 503
    digest = hashlib.sha256(b"t").hexdigest()
    assert main(["purge", "-c", str(admin), "--token-sha256", digest]) == 1
    assert json.loads(Recorder.seen[0][3]) == {"token_sha256": digest}
    assert json.loads(capsys.readouterr().err)["complete"] is False


def test_usage_errors(admin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["purge", "-c", str(admin), "--token-stdin"]) == 2
    bare = tmp_path / "bare.yml"
    bare.write_text("_format_version: '2.1'\n")
    assert main(["purge", "-c", str(bare), "--token-sha256", "0" * 64]) == 2
    with pytest.raises(SystemExit):
        main(["purge", "-c", str(admin), "--token", "on-the-command-line"])
    assert Recorder.seen == []
