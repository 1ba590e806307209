"""A mock of the OpenAI API (and of Azure OpenAI's and Anthropic's): a real HTTP/1.1 server on a real socket (asyncio
streams, keep-alive, chunked).

It answers the endpoints the proxy serves with OpenAI-shaped bodies, Anthropic's Messages API (`/v1/messages`,
`/v1/messages/count_tokens`) with Anthropic-shaped ones, and it checks what reaches it: a request must carry a
project's upstream key in the header its `auth` mode reads, no other credential header, and no header or body may
contain an `sk-wt-` token (`violations` lists any that did). The modes, each the provider's way:

    bearer      `Authorization: Bearer <key>` (OpenAI; the default)
    api-key     `api-key: <key>`, no Authorization (Azure OpenAI)
    x-api-key   `x-api-key: <key>` and an `anthropic-version` header, no Authorization (Anthropic); its errors and
                `GET /models` are Anthropic's shape

A missing or wrong key gets that provider's 401. Which keys are accepted: any `sk-` key but an `sk-wt-` token (as
projects' keys are), or only those given as `keys`. `Received.credentials` says which header carried which key.
Request headers steer it, so a test can ask through the proxy for any behaviour:

    x-mock-status: 500          answer with this status and an error body (Anthropic's in x-api-key mode and on
                                Anthropic's routes, else OpenAI's)
    x-mock-delay: 2.5           wait this long before the response headers
    x-mock-chunks: 5            stream this many chunks (streamed chat completions and messages)
    x-mock-chunk-delay: 0.2     wait this long between chunks
    x-mock-at-once: 1           a stream's head and every event in one write (as a fast upstream's arrive together)
    x-mock-end-delay: 0.5       wait this long between a stream's last event and the end of its body
    x-mock-drop: before-headers | mid-body     close the connection there
    x-mock-echo: 1              answer with what was received (method, path, query, headers, body)
    x-mock-cache-read: 5        Anthropic's usage: this many prompt tokens read from the cache (default 0)
    x-mock-cache-creation: 3    Anthropic's usage: this many prompt tokens written to the cache (default 0)
    x-mock-delta-usage: full    a streamed message's message_delta repeats the input and cache counts (as newer API
                                versions do; by default it has only output_tokens)
    x-mock-usage-first: 1       a message's usage before its content, not after
    x-mock-cache-control: no-store   the answer's Cache-Control header (JSON answers)
    x-mock-more-headers: 1      JSON answers also carry Vary twice, CORS and rate-limit headers of the upstream's own

Run on its own (for benchmarks): `python tests/mock_upstream.py --port 9000 [--auth x-api-key]`.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import re
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

TOKEN_MARK = b"sk-wt-"
# POST endpoints whose body is a JSON object: any other body (or one nested too deep to read) gets OpenAI's 400.
JSON_ROUTES = frozenset({"/chat/completions", "/completions", "/embeddings", "/audio/speech", "/responses"})
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
# Anthropic's Messages API: served in every mode, always in Anthropic's shape.
ANTHROPIC_ROUTES = frozenset({"/messages", "/messages/count_tokens"})
# Which header each auth mode reads the key from; these are the credential headers a request may carry.
AUTH_HEADERS = {"bearer": "authorization", "api-key": "api-key", "x-api-key": "x-api-key"}


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self):
        return json.loads(self.body)

    @property
    def credentials(self) -> dict[str, str]:
        """The credentials the request carried, by the header that carried each (`Bearer ` taken off), e.g.
        `{"x-api-key": "sk-ant-…"}`: a test asserts that a project's key went in its upstream's header, alone."""
        found = {}
        for name in AUTH_HEADERS.values():
            value = self.header(name)
            if value is not None:
                found[name] = value.removeprefix("Bearer ") if name == "authorization" else value
        return found

    @property
    def auth_header(self) -> str | None:
        """The one header that carried a credential (None when none did, or more than one)."""
        found = self.credentials
        return next(iter(found)) if len(found) == 1 else None


class Drop(Exception):
    """Close the connection without a word."""


class MockUpstream:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        auth: str = "bearer",
        keys: Iterable[str] | None = None,
    ) -> None:
        """`auth`: bearer | api-key | x-api-key (see the module's doc). `keys`: the only upstream keys accepted (by
        default any `sk-` key but a token)."""
        if auth not in AUTH_HEADERS:
            raise ValueError(f"auth must be one of {', '.join(AUTH_HEADERS)}")
        self.host, self.port = host, port
        self.record = record
        self.auth = auth
        self.keys = frozenset(keys) if keys is not None else None
        self.requests: list[Received] = []
        self.violations: list[str] = []
        self.disconnects: dict[str, float] = {}  # request ID → when the proxy closed the connection mid-answer
        self.finished: dict[str, float] = {}  # request ID → when the mock sent the last byte
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]

    def start_in_thread(self) -> "MockUpstream":
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="mock-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("mock upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def reset(self) -> None:
        self.requests.clear()
        self.violations.clear()
        self.disconnects.clear()
        self.finished.clear()

    def last(self, path_suffix: str = "") -> Received:
        return next(r for r in reversed(self.requests) if r.path.endswith(path_suffix))

    # --- HTTP ---------------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = []
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.append((name.strip().lower(), value.strip()))
                length = int(next((v for k, v in headers if k == "content-length"), "0"))
                body = await reader.readexactly(length) if length else b""
                path, _, query = target.partition("?")
                request = Received(method, path, query, headers, body)
                self._check(request)
                if self.record:
                    self.requests.append(request)
                keep_alive = await self._answer(request, reader, writer)
                if not keep_alive:
                    return
        except (Drop, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _accepts(self, key: str) -> bool:
        if key.startswith("sk-wt-"):
            return False
        return key in self.keys if self.keys is not None else key.startswith("sk-")

    def _authorized(self, request: Received) -> bool:
        """The mode's header carries an accepted key (and, for api-key and x-api-key, no Authorization is there)."""
        value = request.header(AUTH_HEADERS[self.auth]) or ""
        if self.auth == "bearer":
            return value.startswith("Bearer ") and self._accepts(value.removeprefix("Bearer "))
        return request.header("authorization") is None and self._accepts(value)

    def _check(self, request: Received) -> None:
        expected = AUTH_HEADERS[self.auth]
        if not self._authorized(request):
            self.violations.append(f"{request.path}: {expected} is not an upstream key")
        for name in request.credentials:
            if name != expected:
                self.violations.append(f"{request.path}: a credential in {name}, which {self.auth} does not use")
        for name, value in request.headers:
            if TOKEN_MARK in value.encode("latin-1"):
                self.violations.append(f"{request.path}: token in header {name}")
        if TOKEN_MARK in request.body:
            self.violations.append(f"{request.path}: token in body")

    async def _answer(self, request: Received, reader, writer) -> bool:
        delay = float(request.header("x-mock-delay") or 0)
        if delay:
            await asyncio.sleep(delay)
        drop = request.header("x-mock-drop")
        if drop == "before-headers":
            raise Drop
        route = request.path.removeprefix("/v1")
        anthropic = self.auth == "x-api-key" or route in ANTHROPIC_ROUTES  # errors in Anthropic's shape
        if not self._authorized(request):
            if self.auth == "x-api-key":
                return await self._anthropic_error(writer, 401, "invalid x-api-key")
            if self.auth == "api-key":
                return await self._json(writer, 401, AZURE_UNAUTHORIZED)
            return await self._json(writer, 401, _error("Incorrect API key provided.", "invalid_api_key"))
        if self.auth == "x-api-key" and not request.header("anthropic-version"):
            return await self._anthropic_error(writer, 400, "anthropic-version: header is required")
        if status := request.header("x-mock-status"):
            if anthropic:
                return await self._anthropic_error(writer, int(status), f"mock failure {status}")
            return await self._json(writer, int(status), _error(f"mock failure {status}", "mock_failure"))
        if request.header("x-mock-echo"):
            echo = {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": request.headers,
                "body": request.body.decode("utf-8", "replace"),
            }
            return await self._json(writer, 200, echo)
        if route in ANTHROPIC_ROUTES and request.method == "POST":
            return await self._messages(request, route, reader, writer)
        if request.method == "POST" and route in JSON_ROUTES:
            try:
                payload = request.json()
            except (ValueError, RecursionError):
                payload = None
            if not isinstance(payload, dict):
                return await self._json(writer, 400, _error("We could not parse the JSON body of your request.", None))
        if route == "/chat/completions" and request.method == "POST":
            if payload.get("stream"):
                return await self._stream_chat(request, payload, reader, writer)
            return await self._json_for(request, writer, _chat_completion(payload))
        if route == "/completions" and request.method == "POST":
            return await self._json(writer, 200, _completion(payload))
        if route == "/embeddings" and request.method == "POST":
            return await self._json_for(request, writer, _embeddings(payload))
        if route == "/models" and request.method == "GET":
            if self.auth == "x-api-key":
                return await self._anthropic_json(writer, 200, _anthropic_models())
            return await self._json(writer, 200, {"object": "list", "data": [_model("gpt-4o"), _model("gpt-4o-mini")]})
        if route.startswith("/models/") and request.method == "GET":
            if self.auth == "x-api-key":
                return await self._anthropic_json(writer, 200, _anthropic_model(route.removeprefix("/models/")))
            return await self._json(writer, 200, _model(route.removeprefix("/models/")))
        if route == "/audio/speech" and request.method == "POST":
            return await self._send(writer, 200, "audio/mpeg", speech_bytes(payload.get("input", "")))
        if route == "/files" and request.method == "POST":
            return await self._json(writer, 200, _file_object(request))
        if route.startswith("/files/") and request.method == "DELETE":
            deleted = {"id": route.removeprefix("/files/"), "object": "file", "deleted": True}
            return await self._json(writer, 200, deleted)
        if route == "/responses" and request.method == "POST":
            return await self._json(writer, 200, _response(payload))
        if anthropic:
            return await self._anthropic_error(writer, 404, f"Not found: {request.method} {request.path}")
        return await self._json(writer, 404, _error(f"Invalid URL ({request.method} {request.path})", None))

    async def _json(self, writer, status: int, document) -> bool:
        return await self._send(writer, status, "application/json", json.dumps(document).encode())

    async def _json_for(self, request: Received, writer, document) -> bool:
        """A 200 JSON answer, with the Cache-Control the request asks for."""
        said = request.header("x-mock-cache-control")
        extra = f"cache-control: {said}\r\n" if said else ""
        if request.header("x-mock-more-headers"):
            extra += MORE_HEADERS
        return await self._send(writer, 200, "application/json", json.dumps(document).encode(), extra)

    async def _anthropic_json(self, writer, status: int, document) -> bool:
        body = json.dumps(document).encode()
        return await self._send(writer, status, "application/json", body, ANTHROPIC_RESPONSE_HEADERS)

    async def _anthropic_error(self, writer, status: int, message: str) -> bool:
        return await self._anthropic_json(writer, status, _anthropic_error(status, message))

    async def _send(self, writer, status: int, content_type: str, body: bytes, extra: str = "") -> bool:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "x-request-id: req_mock_upstream\r\nopenai-organization: company-org\r\nset-cookie: upstream=1\r\n"
            f"openai-processing-ms: 1\r\n{extra}\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        return True

    async def _messages(self, request: Received, route: str, reader, writer) -> bool:
        """Anthropic's Messages API: a message (streamed or not), or a count of input tokens."""
        try:
            payload = request.json()
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            return await self._anthropic_error(writer, 400, "There was an issue with the JSON body of your request.")
        if route == "/messages/count_tokens":
            return await self._anthropic_json(writer, 200, {"input_tokens": ANTHROPIC_INPUT_TOKENS})
        usage = _anthropic_usage(request, output_tokens=7)
        if payload.get("stream") is True:
            return await self._stream_message(request, payload, usage, reader, writer)
        return await self._anthropic_json(
            writer, 200, _message(payload, usage, usage_first=bool(request.header("x-mock-usage-first")))
        )

    async def _stream_chat(self, request: Received, payload: dict, reader, writer) -> bool:
        chunks = int(request.header("x-mock-chunks") or 3)
        include_usage = (payload.get("stream_options") or {}).get("include_usage") is True
        model = payload.get("model", "gpt-4o")

        def part(index: int) -> bytes:
            delta = {"content": f"part{index} "} | ({"role": "assistant"} if index == 0 else {})
            return _chunk(model, [{"index": 0, "delta": delta, "finish_reason": None}], include_usage)

        end = [_chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}], include_usage)]
        if include_usage:
            usage = {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": 11 + chunks}
            end.append(_chunk(model, [], include_usage, usage))
        end.append(b"data: [DONE]\n\n")
        head = b"x-request-id: req_mock_stream\r\n"
        return await self._stream(request, reader, writer, head, [], map(part, range(chunks)), end)

    async def _stream_message(self, request: Received, payload: dict, usage: dict, reader, writer) -> bool:
        """Anthropic's event sequence: message_start (the input side of the usage), a text block of one delta per
        chunk, message_delta (the final output count), message_stop."""
        chunks = int(request.header("x-mock-chunks") or 3)
        start_usage = usage | {"output_tokens": 1}
        message = _message(payload, start_usage) | {"content": [], "stop_reason": None}
        begin = [
            _sse("message_start", {"type": "message_start", "message": message}),
            _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": _text("")}),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]

        def part(index: int) -> bytes:
            delta = {"type": "text_delta", "text": f"part{index} "}
            return _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

        final_usage = {"output_tokens": chunks}
        if request.header("x-mock-delta-usage") == "full":
            final_usage = usage | final_usage
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        end = [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}),
            _sse("message_stop", {"type": "message_stop"}),
        ]
        head = ANTHROPIC_RESPONSE_HEADERS.encode()
        return await self._stream(request, reader, writer, head, begin, map(part, range(chunks)), end)

    async def _stream(self, request: Received, reader, writer, head: bytes, begin, parts, end) -> bool:
        """Server-sent events, chunked: `begin`, then `parts` one per x-mock-chunk-delay, then `end`; stops when the
        proxy hangs up."""
        request_id = request.header("x-request-id") or ""
        chunk_delay = float(request.header("x-mock-chunk-delay") or 0)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n" + (
            b"transfer-encoding: chunked\r\n%b\r\n" % head
        )
        if request.header("x-mock-at-once"):
            events = b"".join(b"%x\r\n%b\r\n" % (len(event), event) for event in [*begin, *parts, *end])
            writer.write(head + events + b"0\r\n\r\n")
            await writer.drain()
            self.finished[request_id] = time.monotonic()
            return True
        writer.write(head)
        hung_up = asyncio.ensure_future(reader.read(1))  # b"" once the proxy closes the connection
        try:
            for event in begin:
                await self._write_chunk(writer, event)
            for index, event in enumerate(parts):
                await self._write_chunk(writer, event)
                if request.header("x-mock-drop") == "mid-body" and index == 0:
                    raise Drop
                await self._pause(chunk_delay, hung_up, request_id)
            for event in end:
                await self._write_chunk(writer, event)
            await self._pause(float(request.header("x-mock-end-delay") or 0), hung_up, request_id)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.finished[request_id] = time.monotonic()
        except ConnectionError:
            self.disconnects[request_id] = time.monotonic()
            raise Drop from None
        finally:
            hung_up.cancel()
            await asyncio.gather(hung_up, return_exceptions=True)  # the reader is free for the next request
        return True

    async def _pause(self, seconds: float, hung_up: asyncio.Future, request_id: str) -> None:
        """Wait `seconds` within a stream; a proxy that hangs up meanwhile ends it (recorded as a disconnect)."""
        if seconds:
            done, _ = await asyncio.wait([hung_up], timeout=seconds)
            if done:
                self.disconnects[request_id] = time.monotonic()
                raise Drop

    @staticmethod
    async def _write_chunk(writer, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()


# --- OpenAI-shaped bodies -----------------------------------------------------------------------------------------
def _error(message: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "openai"}


def _chat_completion(payload: dict) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": payload.get("model", "gpt-4o"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock.", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def _completion(payload: dict) -> dict:
    return {
        "id": "cmpl-mock",
        "object": "text_completion",
        "created": 1700000000,
        "model": payload.get("model", "gpt-3.5-turbo-instruct"),
        "choices": [{"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def _chunk(model: str, choices: list, include_usage: bool, usage: dict | None = None) -> bytes:
    document = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
    }
    if include_usage:
        document["usage"] = usage  # as OpenAI does: null in every chunk but the last, once usage is asked for
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"  # OpenAI's compact form


def _embeddings(payload: dict) -> dict:
    inputs = payload.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    vector = [0.25, -0.5, 0.75, 1.0]
    as_base64 = payload.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector,
        }
        for i in range(len(inputs))
    ]
    tokens = 5 * len(inputs)
    return {
        "object": "list",
        "data": data,
        "model": payload.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def speech_bytes(text: str) -> bytes:
    """Deterministic "audio": an ID3 header and bytes of every value, so any mangling shows."""
    return b"ID3\x04\x00\x00" + bytes(range(256)) * 64 + text.encode()


def _file_object(request: Received) -> dict:
    boundary = re.search(r"boundary=([^;]+)", request.header("content-type") or "")
    fields, filename, size = {}, None, 0
    if boundary:
        for part in request.body.split(b"--" + boundary.group(1).strip('"').encode()):
            head, _, content = part.partition(b"\r\n\r\n")
            content = content.removesuffix(b"\r\n")
            name = re.search(rb'name="([^"]*)"', head)
            if not name:
                continue
            file_name = re.search(rb'filename="([^"]*)"', head)
            if file_name:
                filename, size = file_name.group(1).decode(), len(content)
                fields["sha"] = hashlib.sha256(content).hexdigest()
            else:
                fields[name.group(1).decode()] = content.decode()
    return {
        "id": "file-mock",
        "object": "file",
        "bytes": size,
        "created_at": 1700000000,
        "filename": filename,
        "purpose": fields.get("purpose"),
        "status": "processed",
        "status_details": fields.get("sha"),
    }


def _response(payload: dict) -> dict:
    return {
        "id": "resp_mock",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": payload.get("model"),
        "output": [
            {
                "type": "message",
                "id": "msg_mock",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello from the mock.", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 9,
            "output_tokens": 5,
            "total_tokens": 14,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


# --- Azure- and Anthropic-shaped bodies -----------------------------------------------------------------------------
AZURE_UNAUTHORIZED = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
        "key for an active subscription and use a correct regional API endpoint for your resource.",
    }
}
ANTHROPIC_RESPONSE_HEADERS = "request-id: req_mock_anthropic\r\nanthropic-organization-id: company-org-id\r\n"
ANTHROPIC_INPUT_TOKENS = 11
MORE_HEADERS = (
    "vary: Accept-Encoding\r\nVary: Accept\r\naccess-control-allow-origin: *\r\n"
    "X-RateLimit-Limit-Requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n"
)
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _anthropic_error(status: int, message: str) -> dict:
    kind = ANTHROPIC_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock_anthropic"}


def _anthropic_usage(request: Received, output_tokens: int) -> dict:
    """Anthropic's usage as its API sends it today: the cache counts always there (0 without caching)."""
    cache_read = int(request.header("x-mock-cache-read") or 0)
    cache_creation = int(request.header("x-mock-cache-creation") or 0)
    return {
        "input_tokens": ANTHROPIC_INPUT_TOKENS,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_creation, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _message(payload: dict, usage: dict, usage_first: bool = False) -> dict:
    head = {"id": "msg_01MockUpstream", "type": "message", "role": "assistant"}
    head["model"] = payload.get("model", "claude-sonnet-4-5")
    body = {"content": [_text("Hello from the mock.")], "stop_reason": "end_turn", "stop_sequence": None}
    if usage_first:
        return head | {"usage": usage} | body
    return head | body | {"usage": usage}


def _sse(name: str, document: dict) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


def _anthropic_model(model_id: str) -> dict:
    name = model_id.replace("-", " ").title()
    return {"type": "model", "id": model_id, "display_name": name, "created_at": "2025-09-29T00:00:00Z"}


def _anthropic_models() -> dict:
    data = [_anthropic_model("claude-sonnet-4-5"), _anthropic_model("claude-haiku-4-5")]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--auth", choices=tuple(AUTH_HEADERS), default="bearer", help="where the key is read from")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    mock = MockUpstream(args.host, args.port, record=False, auth=args.auth)

    async def run() -> None:
        await mock.serve()
        print(f"mock upstream on {mock.base_url} ({mock.auth})", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
