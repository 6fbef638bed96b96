"""``ClientResponse``'s header values read from the head as received (``head_values``, a cache miss's way to its
``Cache-Control``) are what the split fields (``head_fields_text``, ``ClientResponse.headers``) give, for any head
llhttp accepts: names in any case, values with blanks, colons, latin-1 bytes, other names that contain the one
looked for, and a value that holds the name itself."""

from __future__ import annotations

import random

from phantom_token.http.client import ClientResponse, head_fields_text, head_values

NAMES = ["Cache-Control", "cache-control", "CACHE-CONTROL", "X-Cache-Control", "Cache-Control-X", "Content-Type",
         "Content-Length", "Date", "cache-controls", "Cache-Contro"]
VALUES = ["max-age=60", "", " \t no-store \t", "a:b: c", "caf\u00e9", "cache-control: x", "\r\ncache-control:",
          "private, max-age=0", "\t"]
BLANKS = ["", " ", " \t"]


def test_values_from_the_head_are_those_of_the_split_fields() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        lines = []
        for _ in range(rng.randrange(0, 7)):
            value = rng.choice(VALUES).replace("\r\n", "")  # llhttp lets no CR or LF into a value
            lines.append(rng.choice(NAMES) + ":" + rng.choice(BLANKS) + value)
        head = ("HTTP/1.1 200 OK\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode("latin-1")
        fields = head_fields_text(head)
        for lname in ("cache-control", "content-type", "date", "x-cache-control"):
            expected = [value for name, value in fields if name.lower() == lname]
            assert head_values(head, lname) == expected, head
            response = ClientResponse(200, None, b"", head)
            assert response.values(lname) == expected
            assert response.headers == fields
            assert response.values(lname) == expected  # from the split fields now


def test_a_response_made_with_headers_keeps_them() -> None:
    response = ClientResponse(200, [("Cache-Control", "max-age=5"), ("X", "y")], b"{}")
    assert response.values("cache-control") == ["max-age=5"]
    assert response.headers == [("Cache-Control", "max-age=5"), ("X", "y")]
    assert response.header("x") == "y"
