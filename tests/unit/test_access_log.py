"""The access log's pure parts: request-id validation, the fingerprint memo, the line's fields and both forms, the
X-Request-Id rewrite of a forwarded head. (What a real ``serve``/``authz`` writes: tests/e2e/test_access_log.py.)"""

from __future__ import annotations

import json
import logging

import pytest

from phantom_token.core.bearer import fingerprint
from phantom_token.core.request import TokenMemo
from phantom_token.frontends import access_log as access
from phantom_token.frontends.forwarding import with_request_id
from phantom_token.log import JsonFormatter, setup_logging

TOKEN = "a1b2c3d4-e5f6-4711-8899-aabbccddeeff"


@pytest.mark.parametrize("value", ["abc", "A-Z.a_z:0-9", "x" * 128, "0f" * 8, "req:1.2_3-4"])
def test_valid_request_ids_are_kept(value: str) -> None:
    assert access.valid_request_id(value)
    assert access.request_id({"x-request-id": [value]}) == (value, True)


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a\"b", "a=b", "é", "a\tb", "a/b", "line\nbreak", "{}"])
def test_unsafe_or_long_request_ids_are_replaced(value: str) -> None:
    assert not access.valid_request_id(value)
    replaced, own = access.request_id({"x-request-id": [value]})
    assert not own
    assert len(replaced) == 16
    assert int(replaced, 16) >= 0


def test_a_missing_or_repeated_request_id_is_generated_afresh_each_time() -> None:
    first, own = access.request_id({})
    assert not own
    assert access.request_id({"x-request-id": ["a", "b"]})[1] is False
    assert access.request_id({})[0] != first


def _memo(value: str) -> TokenMemo:
    memo = TokenMemo()
    memo.value, memo.token = value, value.removeprefix("Bearer ")
    return memo


def test_the_fingerprint_is_the_token_s_and_computed_once_per_token() -> None:
    memo = _memo("Bearer " + TOKEN)
    headers = {"authorization": ["Bearer " + TOKEN]}
    assert access.token_fingerprint(memo, headers) == fingerprint(TOKEN)
    memo.fingerprint = "cached!"  # the second request of the connection reads the memo, not SHA-256 again
    assert access.token_fingerprint(memo, headers) == "cached!"
    memo.value, memo.token = "Bearer other-token", "other-token"  # the engine read a new token
    assert access.token_fingerprint(memo, {"authorization": ["Bearer other-token"]}) == fingerprint("other-token")


@pytest.mark.parametrize("headers", [{}, {"authorization": ["Bearer another"]},
                                     {"authorization": ["Bearer " + TOKEN, "Bearer " + TOKEN]}])
def test_no_fingerprint_unless_this_request_carried_the_memo_s_token(headers: dict[str, list[str]]) -> None:
    assert access.token_fingerprint(_memo("Bearer " + TOKEN), headers) == "-"
    assert access.token_fingerprint(None, {"authorization": ["Bearer " + TOKEN]}) == "-"
    assert access.token_fingerprint(TokenMemo(), {"authorization": [""]}) == "-"


def test_fields_in_order_and_the_text_form() -> None:
    fields = access.fields("serve", "api", "GET", "/api/orders", 200, "allowed", "1a2b3c4d", 1.23456, 0.0, 0.5, "r-1")
    assert list(fields) == ["front_door", "route", "method", "path", "status", "outcome", "token", "total_ms",
                            "introspection_ms", "upstream_ms", "request_id"]
    assert access.text_line(fields) == ("front_door=serve route=api method=GET path=/api/orders status=200 "
                                        "outcome=allowed token=1a2b3c4d total_ms=1.235 introspection_ms=0.0 "
                                        "upstream_ms=0.5 request_id=r-1")
    authz = access.fields("authz", None, "", "", 400, "refused", "-", 0.0, 0.0, None, "r")
    assert "upstream_ms" not in authz
    assert authz["route"] == authz["method"] == authz["path"] == "-"


def test_a_value_with_other_characters_is_json_quoted_so_a_line_stays_one_line() -> None:
    fields = access.fields("serve", 'route "x"', "GET", "/a b\nforged=1", 404, "not_found", "-", 0, 0, 0, "r")
    line = access.text_line(fields)
    assert "\n" not in line
    assert 'path="/a b\\nforged=1"' in line
    assert 'route="route \\"x\\""' in line


def test_json_records_carry_the_fields_as_members(caplog: pytest.LogCaptureFixture) -> None:
    fields = access.fields("serve", "api", "GET", "/api", 401, "unauthorized", "-", 1.0, 0.0, 0.0, "r-1")
    with caplog.at_level(logging.INFO, logger="phantom_token.access"):
        access.write(fields)
    record = caplog.records[-1]
    assert record.name == "phantom_token.access"
    assert record.getMessage() == access.text_line(fields)
    document = json.loads(JsonFormatter().format(record))
    assert "message" not in document
    assert {key: document[key] for key in fields} == fields
    assert document["logger"] == "phantom_token.access"
    assert document["time"].endswith("Z")


def test_the_access_logger_writes_only_when_on_whatever_the_level() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("text", "warning", access_log=True)
        assert access.ACCESS_LOGGER.isEnabledFor(logging.INFO)
        setup_logging("text", "debug", access_log=False)
        assert not access.ACCESS_LOGGER.isEnabledFor(logging.CRITICAL)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        access.ACCESS_LOGGER.setLevel(logging.NOTSET)


HEAD = b"GET /x HTTP/1.1\r\nAccept: */*\r\nHost: up\r\n\r\n"


def test_with_request_id_adds_one_line() -> None:
    assert with_request_id(HEAD, b"0123", False) == (
        b"GET /x HTTP/1.1\r\nAccept: */*\r\nHost: up\r\nX-Request-Id: 0123\r\n\r\n")


def test_with_request_id_keeps_the_client_s_own() -> None:
    head = b"GET /x HTTP/1.1\r\nX-Request-Id: mine\r\nHost: up\r\n\r\n"
    assert with_request_id(head, b"mine", True) is head


def test_with_request_id_replaces_every_copy_the_client_sent() -> None:
    head = b"GET /x-request-id:/ HTTP/1.1\r\nx-request-id: a b\r\nAccept: */*\r\nX-REQUEST-ID: two\r\nHost: up\r\n\r\n"
    assert with_request_id(head, b"new", False) == (
        b"GET /x-request-id:/ HTTP/1.1\r\nAccept: */*\r\nHost: up\r\nX-Request-Id: new\r\n\r\n")


@pytest.mark.parametrize("json_format", [False, True])
def test_the_access_writer_writes_what_the_handler_would(json_format: bool) -> None:
    import io
    import re

    from phantom_token.log import AccessWriter

    fields = access.fields("authz", "api", "GET", "/a b", 200, "allowed", "1a2b3c4d", 1.0, 0.0, None, "r-1")
    stream = io.StringIO()
    AccessWriter(stream, json_format).write(fields, access.text_line(fields))
    line = stream.getvalue()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    if json_format:
        document = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document.pop("time"))
        assert document == {"level": "info", "logger": "phantom_token.access", **fields}
    else:
        stamp, rest = line[:23], line[23:]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", stamp)
        assert rest == " INFO phantom_token.access: " + access.text_line(fields) + "\n"
