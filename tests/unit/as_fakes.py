"""A fake authorization server behind a fake HTTP client (an introspection ``Requester``): answers by URL,
records requests; no sockets."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from phantom_token.http.client import ClientError, ClientResponse

Answer = ClientResponse | ClientError | Callable[[bytes], ClientResponse]


def json_response(document: object, status: int = 200, headers: list[tuple[str, str]] | None = None) -> ClientResponse:
    return ClientResponse(status, [("Content-Type", "application/json"), *(headers or [])],
                          json.dumps(document).encode())


def text_response(body: str, status: int = 200, content_type: str = "application/jwt") -> ClientResponse:
    return ClientResponse(status, [("Content-Type", content_type)], body.encode())


@dataclass
class Sent:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    ssl: ssl.SSLContext | None
    repeatable: bool = False  # the caller let HttpClient send it twice (only what changes nothing at the AS)


@dataclass
class FakeServer:
    """``answers[url]``: a response, an exception to raise, or a function of the request body."""

    answers: dict[str, Answer] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes = b"", *,
                      timeout: float, ssl: ssl.SSLContext | None = None,  # noqa: ASYNC109
                      max_body: int = 1 << 20, repeatable: bool = False) -> ClientResponse:
        self.sent.append(Sent(method, url, headers, body, ssl, repeatable))
        answer = self.answers.get(url, ClientResponse(404, [], b""))
        if isinstance(answer, ClientError):
            raise answer
        if callable(answer):
            return answer(body)
        return answer

    def calls(self, url: str) -> int:
        return sum(1 for sent in self.sent if sent.url == url)
