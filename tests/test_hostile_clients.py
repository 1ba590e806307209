"""Hostile clients meet limits in the server itself (llmproxy.server, llmproxy.body_limit), on a real gunicorn
server with uvicorn workers: oversized bodies, heads too big or with too many headers, heads that never finish, too
many connections; and normal requests still work beside them. Raw sockets where a well-behaved client cannot do it.
"""

import json
import os
import re
import resource
import secrets
import select
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.db import connection

from proxy.models import UsageRecord
from tests.live import TEST_SERVER_ENV, database_url, settle_usage, start_server, wait_for_usage
from tokens.models import Token

HEAD_TIMEOUT = 1.0
MANAGEMENT_TOKEN = secrets.token_urlsafe(24)
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def descriptor_limits(pid: int) -> tuple[int, int]:
    """A process's soft and hard limits on open descriptors, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no descriptor limit for {pid}")


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, mock_upstream, tmp_path_factory):
    """Two workers with a short head timeout, their own temporary directory, and a connection cap the descriptors
    cannot serve; started with a low soft descriptor limit, which the server must raise."""
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "spool").mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    try:
        server = start_server(
            database=database_url(connection.settings_dict),
            upstream_url=mock_upstream.base_url,
            log=tmp / "server.log",
            env={
                **TEST_SERVER_ENV,
                "REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
                "MAX_CONNECTIONS_PER_WORKER": str(hard),
                "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
                "TMPDIR": str(tmp / "spool"),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
            },
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server.spool = tmp / "spool"
    yield server
    server.stop()


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, or whatever came before the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a whole response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    if "content-length" in headers:
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "closed in the middle of the body"
            body += chunk
    elif headers.get("transfer-encoding") == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "closed in the middle of the body"
            body += chunk
        body = b"".join(re.findall(rb"[0-9a-f]+\r\n(.*?)\r\n", body, re.S))
    return int(lines[0].split()[1]), headers, body


def closing_times(sockets: list[socket.socket], started: float, limit: float, dribbling=()) -> list[float]:
    """Seconds from `started` until the server closed each socket (`limit` for one still open then); a socket in
    `dribbling` sends one more byte of a header value every 0.2 s meanwhile."""
    closed: dict[socket.socket, float] = {}
    while len(closed) < len(sockets) and time.monotonic() - started < limit:
        open_ = [sock for sock in sockets if sock not in closed]
        for sock in select.select(open_, [], [], 0.2)[0]:
            try:
                if sock.recv(1024) == b"":
                    closed[sock] = time.monotonic() - started
            except ConnectionResetError:
                closed[sock] = time.monotonic() - started
        for sock in dribbling:
            if sock not in closed:
                try:
                    sock.send(b"a")
                except OSError:
                    closed[sock] = time.monotonic() - started
    return [closed.get(sock, limit) for sock in sockets]


def spooled(server) -> dict[str, int]:
    """Files under the server's temporary directory that a worker has open, by name: their sizes."""
    found = {}
    for pid in server.pids()[1:]:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
                if target.startswith(str(server.spool)):
                    found[target] = fd.stat().st_size
            except OSError:
                continue
    return found


def test_a_chunked_body_over_the_limit_is_413_before_anything_is_spooled(server):
    sock = connect(server)
    sock.sendall(
        b"POST /manage/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    # 4 MiB, past Django's in-memory 2.5 MiB too (beyond which it would write the body to a temporary file), and
    # not finished: the request stays open while the server's temporary files are looked at.
    for _ in range(64):
        sock.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
    time.sleep(0.3)  # for the server to read what was sent

    assert all(size == 0 for size in spooled(server).values()), spooled(server)
    status, headers, body = read_response(sock)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "request body is larger than 1048576 bytes", "code": "body_too_large"}

    sock.sendall(b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert read_response(sock)[0] == 200, "the connection serves the next request"
    sock.close()


def test_a_declared_body_over_the_limit_is_413_at_once_and_plain_text_outside_the_api(server):
    sock = connect(server)
    sock.sendall(b"POST /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2097152\r\n\r\n")

    status, headers, body = read_response(sock)
    assert status == 413 and headers["content-type"] == "text/plain; charset=utf-8"
    assert body == b"request body is larger than 1048576 bytes\n"
    sock.close()


def test_a_20_kib_header_is_431_and_nothing_reaches_the_upstream(server, live_db, upstream, make_project, make_token):
    issued = make_token(make_project())
    client = openai.OpenAI(
        base_url=server.base_url, api_key=issued.plaintext, max_retries=0, default_headers={"X-Big": "a" * 20480}
    )

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**CHAT)

    assert raised.value.status_code == 431
    assert raised.value.response.headers["connection"] == "close"
    settle_usage()
    assert upstream.requests == []
    assert UsageRecord.objects.count() == 0
    assert Token.objects.get(pk=issued.token.pk).request_count == 0


def test_a_head_of_exactly_the_limit_is_served_and_one_byte_more_is_431(server):
    def head(size: int) -> bytes:
        start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    for size, status in ((16384, 200), (16385, 431)):
        with connect(server) as sock:
            sock.sendall(head(size))
            assert read_response(sock)[0] == status, size


def test_101_headers_are_431_and_100_are_served(server):
    def head(headers: int) -> bytes:
        extra = b"".join(b"X-Header-%d: 1\r\n" % number for number in range(headers - 1))
        return b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"

    with connect(server) as sock:
        sock.sendall(head(100))
        assert read_response(sock)[0] == 200
    with connect(server) as sock:
        sock.sendall(head(101))
        assert read_response(sock)[0] == 431
        assert closing_times([sock], time.monotonic(), 2) < [2], "and the connection is closed"


def test_a_head_that_never_ends_is_431_once_it_passes_the_limit(server):
    """One endless header (the parser would buffer all of it): refused while it is still arriving."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: " + b"a" * 20480)

        assert read_response(sock)[0] == 431


def test_a_connection_without_a_whole_head_is_closed_after_the_head_timeout(server):
    started = time.monotonic()
    silent, half, dribbling = connect(server), connect(server), connect(server)
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    dribbling.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

    times = closing_times([silent, half, dribbling], started, 3 * HEAD_TIMEOUT, dribbling=[dribbling])
    assert all(HEAD_TIMEOUT * 0.8 < seconds < 3 * HEAD_TIMEOUT for seconds in times), times
    for sock in (silent, half, dribbling):
        sock.close()


def test_a_kept_alive_connection_idles_under_keepalive_and_each_later_head_gets_the_timeout(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        time.sleep(HEAD_TIMEOUT * 1.5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200, "idle between requests, it stayed open"

        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        (seconds,) = closing_times([sock], started, 3 * HEAD_TIMEOUT)
        assert HEAD_TIMEOUT * 0.8 < seconds < 3 * HEAD_TIMEOUT, "the clock started at the request's first byte"


def test_the_descriptor_limit_is_raised_and_the_connection_cap_kept_within_it(server):
    for pid in server.pids():
        soft, hard = descriptor_limits(pid)
        assert soft == hard, f"process {pid} kept a soft limit of {soft}"

    hard = descriptor_limits(server.pids()[1])[1]
    lowered = re.findall(r"MAX_CONNECTIONS_PER_WORKER lowered from (\d+) to (\d+)", server.log.read_text())
    assert len(lowered) == 2, server.log_tail()
    assert all(int(wanted) == hard and int(cap) <= hard // 3 for wanted, cap in lowered)


@pytest.fixture
def capped_server(django_db_setup, mock_upstream, tmp_path):
    """One worker that holds at most four connections."""
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path / "server.log",
        env={**TEST_SERVER_ENV, "MAX_CONNECTIONS_PER_WORKER": "4"},
        workers=1,
    )
    time.sleep(0.2)  # the start-up check's connection is gone
    yield server
    server.stop()


def test_over_the_connection_cap_a_new_connection_gets_503_and_the_held_ones_stay_open(capped_server):
    held = [connect(capped_server) for _ in range(4)]
    time.sleep(0.2)

    with connect(capped_server) as extra:
        status, headers, body = read_response(extra)
        assert status == 503 and headers["connection"] == "close"
        assert body == b"Too many connections; try again later.\n"
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200

    held.pop().close()
    time.sleep(0.2)
    assert httpx.get(f"{capped_server.url}/healthz").status_code == 200, "a freed place is taken again"
    for sock in held:
        sock.close()


def test_normal_requests_still_work(server, live_db, upstream, make_project, make_token):
    issued = make_token(make_project())
    client = openai.OpenAI(base_url=server.base_url, api_key=issued.plaintext, max_retries=0)

    assert client.chat.completions.create(**CHAT).choices[0].message.content == "Hello from the mock."
    assert len(list(client.chat.completions.create(**CHAT, stream=True))) == 4
    assert len(wait_for_usage(2)) == 2

    login = httpx.get(f"{server.url}/admin/login/")
    assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
    created = httpx.post(
        f"{server.url}/manage/projects",
        json={"name": "small body", "api_key": "sk-proj-" + "k" * 40},
        headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"},
    )
    assert created.status_code == 201, created.text
