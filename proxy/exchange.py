"""One request through the proxy: what is known about it, its refusal, and the usage record it leaves."""

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from django.http import HttpResponse

from tokens import secret

from . import cors, errors, headers
from .writer import Record, writer

# The request headers the proxy itself reads (all of them are forwarded, or dropped, by `headers`).
READ_HEADERS = frozenset(
    {b"authorization", b"x-api-key", b"origin", b"x-request-id", b"content-type", b"cache-control"}
)


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """A request to `/v1/…` as the proxy reads it: its ASGI scope and its whole body (`proxy.asgi` reads it)."""

    scope: dict
    body: bytes

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def query(self) -> str:
        """The query as sent (the server refuses a request line that is not ASCII, so decoding loses nothing)."""
        return self.scope.get("query_string", b"").decode("latin-1")

    def header(self, name: bytes) -> str | None:
        """A request header's value (`name` in lower case), or None."""
        return next((value.decode("latin-1") for key, value in self.scope["headers"] if key == name), None)


def read_headers(scope: dict) -> dict[bytes, str]:
    return {name: value.decode("latin-1") for name, value in scope["headers"] if name in READ_HEADERS}


def token_prefix(presented: str) -> str:
    """What may be recorded of a presented token: the display prefix of something shaped like ours or like an
    imported one, else nothing (a client may paste a real OpenAI key by mistake)."""
    if presented.startswith(secret.TOKEN.prefix) or secret.ORIGINAL_TOKEN.is_well_formed(presented):
        return secret.display_prefix(presented)
    return ""


@dataclass
class Exchange:
    method: str
    path: str  # as recorded: `/v1/…`, decoded, without the query
    request_id: str
    client_ip: str | None
    origin: str | None  # only when it is an allowed origin: the responses' CORS headers name it
    origin_sent: str | None = None  # the request's Origin, allowed or not
    started: float = field(default_factory=time.perf_counter)
    arrived: datetime = field(default_factory=lambda: datetime.now(UTC))
    token_prefix: str = ""
    token_id: UUID | None = None
    project_id: UUID | None = None
    model: str = ""
    cache: str = ""  # X-Cache, when the project's response cache is on (proxy.cache.Result)
    count_later: bool = False  # admission left the request's count to its record (proxy.admission)

    @classmethod
    def from_scope(cls, scope: dict, read: dict[bytes, str]) -> "Exchange":
        """`read`: the request's headers that the proxy reads (`read_headers`)."""
        origin = read.get(b"origin")
        client = scope.get("client")
        return cls(
            method=scope["method"],
            path=scope["path"],
            request_id=headers.request_id(read.get(b"x-request-id")),
            client_ip=client[0] if client else None,
            origin=origin if cors.allowed(origin) else None,
            origin_sent=origin,
        )

    def elapsed_ms(self, until: float | None = None) -> float:
        return ((until or time.perf_counter()) - self.started) * 1000

    def headers(self) -> dict[str, str]:
        """Headers every response carries."""
        headers = {"X-Request-ID": self.request_id}
        if self.origin:
            headers.update(cors.response_headers(self.origin))
        return headers

    def refuse(self, refusal: errors.Refusal, extra_headers: dict[str, str] | None = None) -> HttpResponse:
        duration = self.elapsed_ms()
        anthropic = errors.anthropic_path(self.path)  # Anthropic's SDKs read their own shape
        body = errors.refusal_body(refusal, anthropic=anthropic, request_id=self.request_id)
        response = HttpResponse(body, status=refusal.status)
        for name, value in (errors.refusal_headers(refusal) | self.headers() | (extra_headers or {})).items():
            response[name] = value
        response["Server-Timing"] = f"proxy;dur={duration:.2f}"
        self.record(
            status=refusal.status, duration_ms=duration, refusal_code=refusal.code, security_event=refusal.event
        )
        return response

    def record(self, **fields) -> None:
        writer.put(
            Record(
                time=self.arrived,
                method=self.method,
                path=self.path,
                request_id=self.request_id,
                client_ip=self.client_ip,
                project_id=self.project_id,
                token_id=self.token_id,
                token_prefix=self.token_prefix,
                model=self.model,
                cache=self.cache,
                count_later=self.count_later,
                **fields,
            )
        )
