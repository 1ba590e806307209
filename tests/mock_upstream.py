"""A mock of the OpenAI API: a real HTTP/1.1 server on a real socket (asyncio streams, keep-alive, chunked).

It answers the endpoints the proxy serves with OpenAI-shaped bodies, and it checks what reaches it: a request must
carry a project's upstream key, and no header or body may contain an `sk-wt-` token (`violations` lists any that
did). Request headers steer it, so a test can ask through the proxy for any behaviour:

    x-mock-status: 500          answer with this status and an OpenAI error body
    x-mock-delay: 2.5           wait this long before the response headers
    x-mock-chunks: 5            stream this many chunks (streamed chat completions)
    x-mock-chunk-delay: 0.2     wait this long between chunks
    x-mock-drop: before-headers | mid-body     close the connection there
    x-mock-echo: 1              answer with what was received (method, path, query, headers, body)

Run on its own (for benchmarks): `python tests/mock_upstream.py --port 9000`.
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
from dataclasses import dataclass, field

TOKEN_MARK = b"sk-wt-"
# POST endpoints whose body is a JSON object: any other body (or one nested too deep to read) gets OpenAI's 400.
JSON_ROUTES = frozenset({"/chat/completions", "/completions", "/embeddings", "/audio/speech", "/responses"})
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}


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


class Drop(Exception):
    """Close the connection without a word."""


class MockUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, record: bool = True) -> None:
        self.host, self.port = host, port
        self.record = record
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

    def _check(self, request: Received) -> None:
        auth = request.header("authorization") or ""
        if not auth.startswith("Bearer sk-") or auth.startswith("Bearer sk-wt-"):
            self.violations.append(f"{request.path}: authorization is not an upstream key")
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
        auth = request.header("authorization") or ""
        if not auth.startswith("Bearer sk-") or auth.startswith("Bearer sk-wt-"):
            return await self._json(writer, 401, _error("Incorrect API key provided.", "invalid_api_key"))
        if status := request.header("x-mock-status"):
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
        route = request.path.removeprefix("/v1")
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
            return await self._json(writer, 200, _chat_completion(payload))
        if route == "/completions" and request.method == "POST":
            return await self._json(writer, 200, _completion(payload))
        if route == "/embeddings" and request.method == "POST":
            return await self._json(writer, 200, _embeddings(payload))
        if route == "/models" and request.method == "GET":
            return await self._json(writer, 200, {"object": "list", "data": [_model("gpt-4o"), _model("gpt-4o-mini")]})
        if route.startswith("/models/") and request.method == "GET":
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
        return await self._json(writer, 404, _error(f"Invalid URL ({request.method} {request.path})", None))

    async def _json(self, writer, status: int, document) -> bool:
        return await self._send(writer, status, "application/json", json.dumps(document).encode())

    async def _send(self, writer, status: int, content_type: str, body: bytes) -> bool:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "x-request-id: req_mock_upstream\r\nopenai-organization: company-org\r\nset-cookie: upstream=1\r\n"
            "openai-processing-ms: 1\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        return True

    async def _stream_chat(self, request: Received, payload: dict, reader, writer) -> bool:
        """Server-sent events, one chunk per delay, chunked transfer; stops when the proxy hangs up."""
        request_id = request.header("x-request-id") or ""
        chunks = int(request.header("x-mock-chunks") or 3)
        chunk_delay = float(request.header("x-mock-chunk-delay") or 0)
        include_usage = (payload.get("stream_options") or {}).get("include_usage") is True
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\nx-request-id: req_mock_stream\r\n\r\n"
        )
        hung_up = asyncio.ensure_future(reader.read(1))  # b"" once the proxy closes the connection
        model = payload.get("model", "gpt-4o")
        try:
            for index in range(chunks):
                delta = {"content": f"part{index} "} | ({"role": "assistant"} if index == 0 else {})
                event = _chunk(model, [{"index": 0, "delta": delta, "finish_reason": None}], include_usage)
                await self._write_chunk(writer, event)
                if request.header("x-mock-drop") == "mid-body" and index == 0:
                    raise Drop
                if chunk_delay:
                    done, _ = await asyncio.wait([hung_up], timeout=chunk_delay)
                    if done:
                        self.disconnects[request_id] = time.monotonic()
                        raise Drop
            await self._write_chunk(
                writer, _chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}], include_usage)
            )
            if include_usage:
                usage = {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": 11 + chunks}
                await self._write_chunk(writer, _chunk(model, [], include_usage, usage))
            await self._write_chunk(writer, b"data: [DONE]\n\n")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    mock = MockUpstream(args.host, args.port, record=False)

    async def run() -> None:
        await mock.serve()
        print(f"mock upstream on {mock.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
