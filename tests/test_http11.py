"""The upstream client (llmproxy.http11) against small servers that answer as upstreams do, and as they fail, on both
event loops the server may run: keep-alive reuse, the three ways a body is delimited, interim responses, HEAD, TLS
with the host name verified, timeouts, the pool's limit, a body closed early, a slow reader, an upstream that breaks
off or does not speak HTTP, and a header that would split the request."""

import asyncio
import ssl

import httpx
import pytest
import uvloop

from llmproxy import egress, http11
from tests.live import free_port
from tests.test_egress import LOOPBACK, make_tls_files

RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture(params=sorted(RUNNERS))
def run(request):
    return RUNNERS[request.param]


def transport(port: int, scheme: str = "http", host: str = "127.0.0.1", **options) -> http11.Transport:
    limits = options.pop("limits", httpx.Limits(max_connections=10, max_keepalive_connections=10))
    return http11.Transport(scheme, host, port, limits=limits, **options)


async def get(made: http11.Transport, path: str = "/", method: str = "GET", timeout: float = 5.0, **extra):
    """A request through the transport, its body read whole; the response."""
    request = httpx.Request(
        method,
        f"{made.scheme}://{made.host}:{made.port}{path}",
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        **extra,
    )
    response = await made.handle_async_request(request)
    try:
        response._content = b"".join([chunk async for chunk in response.stream])
    finally:
        await response.stream.aclose()
    return response


class Upstream:
    """A server that answers each request (its head, read up to the blank line) with `answer(head)`, and counts its
    connections."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.heads: list[bytes] = []

    async def __aenter__(self) -> int:
        async def serve(reader, writer):
            self.connections += 1
            try:
                while head := await reader.readuntil(b"\r\n\r\n"):
                    self.heads.append(head)
                    if await self.answer(head, writer) is False:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def replying(*responses: bytes, close: bool = False):
    async def answer(head, writer):
        for response in responses:
            writer.write(response)
        await writer.drain()
        return not close

    return answer


def test_connections_are_kept_alive_and_reused(run):
    upstream = Upstream(replying(OK))

    async def scenario():
        async with upstream as port:
            made = transport(port)
            return [(await get(made)).content for _ in range(5)]

    assert run(scenario()) == [b"ok"] * 5
    assert upstream.connections == 1
    assert upstream.heads[0].startswith(b"GET / HTTP/1.1\r\n") and b"\r\nhost: 127.0.0.1:" in upstream.heads[0].lower()


def test_chunked_and_until_close_bodies_and_interim_responses(run):
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    until_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"

    async def scenario():
        async with Upstream(replying(chunked)) as port:
            first = await get(transport(port))
        async with Upstream(replying(interim)) as port:
            second = await get(transport(port), method="POST", content=b"{}")
        async with Upstream(replying(until_close, close=True)) as port:
            third = await get(transport(port))
        return first, second, third

    first, second, third = run(scenario())
    assert (first.status_code, first.content) == (200, b"hello world")
    assert (second.status_code, second.content) == (200, b"ok")
    assert (third.status_code, third.content) == (200, b"all of it")


def test_a_head_response_has_no_body_and_its_connection_is_not_reused(run):
    upstream = Upstream(replying(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"))

    async def scenario():
        async with upstream as port:
            made = transport(port)
            return [await get(made, method="HEAD") for _ in range(2)]

    responses = run(scenario())
    assert [(r.status_code, r.headers["content-length"], r.content) for r in responses] == [(200, "1234", b"")] * 2
    assert upstream.connections == 2


def test_a_post_says_its_length_and_an_empty_get_does_not(run):
    upstream = Upstream(replying(OK))

    async def scenario():
        async with upstream as port:
            made = transport(port)
            await get(made, method="POST", content=b'{"a": 1}')
            await get(made, method="POST")
            await get(made)

    run(scenario())
    with_body, empty_post, plain_get = (head.lower() for head in upstream.heads)
    assert b"content-length: 8\r\n" in with_body and b"content-length: 0\r\n" in empty_post
    assert b"content-length" not in plain_get and b"transfer-encoding" not in plain_get


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(run):
    upstream = Upstream(replying(OK))

    async def scenario():
        async with upstream as port:
            with pytest.raises(httpx.LocalProtocolError):
                await get(transport(port), headers=[(b"authorization", b"Bearer k\r\nx-injected: 1")])

    run(scenario())
    assert upstream.connections == 0


def test_tls_verifies_the_host_name_and_the_guard_connects_to_the_address_it_checked(settings, tmp_path, run):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = LOOPBACK
    cert_file, key_file = make_tls_files(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    names_seen = []
    server_context.sni_callback = lambda sock, name, context: names_seen.append(name)
    client_context = ssl.create_default_context(cafile=str(cert_file))

    async def answer(reader, writer):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(OK)
            await writer.drain()

    async def scenario():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            by_name = transport(port, "https", "localhost", ssl_context=client_context, guarded=True)
            first, second = await get(by_name), await get(by_name)  # the same connection
            by_address = transport(port, "https", "127.0.0.1", ssl_context=client_context, guarded=True)
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|IP address mismatch"):
                await get(by_address)  # the certificate names localhost only
            return first, second
        finally:
            server.close()

    first, second = run(scenario())
    assert (first.status_code, first.content, second.content) == (200, b"ok", b"ok")
    assert names_seen[0] == "localhost" and len(names_seen) == 2


def test_the_guard_refuses_an_address_no_setting_allows(run):
    upstream = Upstream(replying(OK))

    async def scenario():
        async with upstream as port:
            with pytest.raises(httpx.ConnectError) as caught:
                await get(transport(port, guarded=True))
            return caught.value

    refused = run(scenario())
    assert egress.is_address_refused(refused) and "loopback" in str(refused)
    assert upstream.connections == 0


def test_a_large_body_arrives_whole_through_a_slow_reader(run):
    body = bytes(range(256)) * 16 * 1024  # 4 MiB, far above what is kept before reading pauses
    upstream = Upstream(replying(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body))

    async def scenario():
        async with upstream as port:
            made = transport(port)
            request = httpx.Request("GET", f"http://127.0.0.1:{port}/")
            response = await made.handle_async_request(request)
            received = bytearray()
            async for chunk in response.stream:
                received += chunk
                await asyncio.sleep(0.001)
            await response.stream.aclose()
            again = await get(made)  # the connection was reused after a clean end
            return bytes(received), again

    received, again = run(scenario())
    assert received == body and again.content == body and upstream.connections == 1


def test_timeouts_and_refusals(run):
    async def silent(head, writer):
        await asyncio.sleep(5)

    async def scenario():
        async with Upstream(silent) as port:
            with pytest.raises(httpx.ReadTimeout):
                await get(transport(port), timeout=0.2)
        with pytest.raises(httpx.ConnectError) as refused:
            await get(transport(free_port()))
        return refused.value

    refused = run(scenario())
    assert any(isinstance(cause, ConnectionRefusedError) for cause in egress.exception_chain(refused))


def test_a_body_that_stops_arriving_times_out(run):
    async def stalls(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario():
        async with Upstream(stalls) as port:
            with pytest.raises(httpx.ReadTimeout):
                await get(transport(port), timeout=0.2)

    run(scenario())


def trickling(chunks: int, gap: float, then: str = "end"):
    """An upstream that answers with `chunks` one-digit chunks `gap` seconds apart, then the body's end, silence
    (`stall`) or a closed connection (`break`)."""

    async def answer(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for index in range(chunks):
            await asyncio.sleep(gap)
            writer.write(b"1\r\n%d\r\n" % (index % 10))
            await writer.drain()
        if then == "stall":
            await asyncio.sleep(5)
        if then == "break":
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return answer


def test_the_read_timeout_bounds_each_wait_not_the_whole_body(run):
    """A stream longer than the read timeout whose chunks keep coming is read whole; once they stop, it times out."""

    async def scenario():
        async with Upstream(trickling(6, 0.1)) as port:
            whole = await get(transport(port), timeout=0.25)
        async with Upstream(trickling(3, 0.1, then="stall")) as port:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ReadTimeout):
                await get(transport(port), timeout=0.25)
            return whole.content, asyncio.get_running_loop().time() - started

    content, waited = run(scenario())
    assert content == b"012345"
    assert 0.5 < waited < 1.5


def test_a_pumped_body_goes_to_the_sink_as_it_arrives_and_waits_when_refused(run):
    """`pump` hands chunks to the sink from the connection's callback; one it refuses waits to be read the usual
    way, then pumping goes on; the end returns True, a stall times out, a break raises."""

    async def pumped(port: int) -> tuple[list, list]:
        made = transport(port)
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/", extensions={"timeout": {"read": 0.5}})
        response = await made.handle_async_request(request)
        body, seen, steps = response.stream, [], []

        def sink(chunk: bytes) -> bool:
            if chunk == b"2" and "refused" not in steps:
                steps.append("refused")
                return False
            seen.append(chunk)
            return True

        try:
            while not await body.pump(sink):
                steps.append("waiting")
                seen.append(b"read:" + await body.next_chunk())
            return seen, steps
        finally:
            await body.aclose()

    async def scenario():
        async with Upstream(trickling(6, 0.05)) as port:
            whole = await pumped(port)
        async with Upstream(trickling(6, 0.05, then="stall")) as port:
            with pytest.raises(httpx.ReadTimeout):
                await pumped(port)
        async with Upstream(trickling(6, 0.05, then="break")) as port:
            with pytest.raises(httpx.RemoteProtocolError):
                await pumped(port)
        return whole

    seen, steps = run(scenario())
    assert seen == [b"0", b"1", b"read:2", b"3", b"4", b"5"]
    assert steps == ["refused", "waiting"]


def test_an_upstream_that_breaks_off_or_does_not_speak_http(run):
    async def scenario():
        async with Upstream(replying(b"", close=True)) as port:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await get(transport(port))
        async with Upstream(replying(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", close=True)) as port:
            with pytest.raises(httpx.RemoteProtocolError, match="before the response's end"):
                await get(transport(port))
        async with Upstream(replying(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as port:
            with pytest.raises(httpx.RemoteProtocolError, match="not valid HTTP/1.1"):
                await get(transport(port))

    run(scenario())


def test_a_body_closed_before_its_end_closes_its_connection(run):
    async def in_two_parts(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"cd")
        await writer.drain()

    upstream = Upstream(in_two_parts)

    async def scenario():
        async with upstream as port:
            made = transport(port)
            response = await made.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))
            async for _ in response.stream:
                break
            await response.stream.aclose()  # the client went away after the first part
            return await get(made)

    assert run(scenario()).content == b"abcd"
    assert upstream.connections == 2


def test_an_idle_connection_the_server_closed_is_not_reused(run):
    upstream = Upstream(replying(OK, close=True))  # keep-alive, then closed

    async def scenario():
        async with upstream as port:
            made = transport(port)
            first = await get(made)
            await asyncio.sleep(0.1)  # the close arrives while the connection is idle in the pool
            second = await get(made)
            return first, second

    first, second = run(scenario())
    assert (first.content, second.content) == (b"ok", b"ok") and upstream.connections == 2


def test_requests_beyond_the_limit_wait_for_a_connection(run):
    release = None

    async def held(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"ok")
        await writer.drain()

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        async with Upstream(held) as port:
            made = transport(port, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
            first = asyncio.create_task(get(made))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await get(made, timeout=0.2)  # the one connection is busy
            second = asyncio.create_task(get(made))
            await asyncio.sleep(0.05)
            assert not second.done()
            release.set()
            await first
            release = asyncio.Event()
            release.set()
            return (await second).content

    assert run(scenario()) == b"ok"
