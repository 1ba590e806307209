"""The upstream connections on asyncio's transports (llmproxy.asyncio_backend), on both event loops the server may
run: TLS with the host name verified, timeouts, a body larger than what reading keeps before it pauses, an idle
connection the server closed, a refused connection."""

import asyncio
import ssl

import httpx
import pytest
import uvloop

from llmproxy import asyncio_backend, egress
from tests.live import free_port
from tests.test_egress import LOOPBACK, make_tls_files

RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def transport(**options) -> httpx.AsyncHTTPTransport:
    made = httpx.AsyncHTTPTransport(**options)
    asyncio_backend.install(made)
    return made


@pytest.fixture(params=sorted(RUNNERS))
def run(request):
    return RUNNERS[request.param]


def test_it_is_under_every_direct_pool():
    made = egress.new_transport("http://127.0.0.1:1/v1", limits=httpx.Limits(), guarded=True)
    assert isinstance(made._pool._network_backend._inner, asyncio_backend.AsyncioBackend)
    with pytest.raises(TypeError):
        asyncio_backend.install(httpx.AsyncHTTPTransport(proxy="http://127.0.0.1:3128"))


def test_tls_verifies_the_host_name(settings, tmp_path, run):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = LOOPBACK
    cert_file, key_file = make_tls_files(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    names_seen = []
    server_context.sni_callback = lambda sock, name, context: names_seen.append(name)
    client_context = ssl.create_default_context(cafile=str(cert_file))

    async def answer(reader, writer):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def scenario():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            guarded = egress.install_guard(transport(verify=client_context))
            async with httpx.AsyncClient(transport=guarded) as client:
                first = await client.get(f"https://localhost:{port}/")
                second = await client.get(f"https://localhost:{port}/")  # the same connection
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|IP address mismatch"):
                    await client.get(f"https://127.0.0.1:{port}/")
            return first, second
        finally:
            server.close()

    first, second = run(scenario())
    assert (first.status_code, first.text, second.text) == (200, "ok", "ok")
    assert names_seen[0] == "localhost" and len(names_seen) == 2


def test_a_large_body_arrives_whole_through_a_slow_reader(run):
    body = bytes(range(256)) * 16 * 1024  # 4 MiB, far above what is kept before reading pauses

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with (
                httpx.AsyncClient(transport=transport()) as client,
                client.stream("GET", f"http://127.0.0.1:{port}/") as response,
            ):
                received = bytearray()
                async for chunk in response.aiter_raw():
                    received += chunk
                    await asyncio.sleep(0.001)
                return bytes(received)
        finally:
            server.close()

    assert run(scenario()) == body


def test_timeouts_and_refusals(run):
    async def silent(reader, writer):
        await asyncio.sleep(5)

    async def scenario():
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(transport=transport(), timeout=0.2) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(f"http://127.0.0.1:{port}/")
                with pytest.raises(httpx.ConnectError) as refused:
                    await client.get(f"http://127.0.0.1:{free_port()}/")
                return refused.value
        finally:
            server.close()

    refused = run(scenario())
    assert any(isinstance(cause, ConnectionRefusedError) for cause in egress.exception_chain(refused))


def test_an_idle_connection_the_server_closed_is_not_reused(run):
    connections = []

    async def answer_once(reader, writer):
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # keep-alive, then closed
        await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(transport=transport()) as client:
                first = await client.get(f"http://127.0.0.1:{port}/")
                await asyncio.sleep(0.1)  # the close arrives while the connection is idle in the pool
                second = await client.get(f"http://127.0.0.1:{port}/")
            return first, second
        finally:
            server.close()

    first, second = run(scenario())
    assert (first.text, second.text) == ("ok", "ok") and len(connections) == 2
