"""Connections opened together are spread over the workers (llmproxy.balance), not taken by whichever wakes first."""

import os
import select
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.live import child_pids

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(sys.platform != "linux", reason="the workers' own sockets are a Linux matter"),
]


def _established_from(port: int) -> set[int]:
    """The socket inodes of established TCP connections to 127.0.0.1:`port` (the server's side)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _burst(server, count: int) -> Counter:
    """Open `count` connections at once, one request on each; how many each worker holds."""
    host, port = server.url.removeprefix("http://").split(":")
    connections = [socket.socket() for _ in range(count)]
    for sock in connections:  # all at once, as a client's pool opens them: queued together before a worker wakes
        sock.setblocking(False)
        sock.connect_ex((host, int(port)))
    for sock in connections:
        select.select([], [sock], [], 5)
        sock.setblocking(True)
    try:
        for sock in connections:  # a whole request on each, so each has been accepted and answered
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        for sock in connections:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        established = _established_from(int(port))
        return Counter({pid: len(_socket_inodes(pid) & established) for pid in child_pids(server.process.pid)})
    finally:
        for sock in connections:
            sock.close()


def test_thirty_two_connections_opened_at_once_are_served_by_both_workers(proxy_server):
    _burst(proxy_server, 32)  # both workers past their first request (a cold one is slow to come back)
    bursts = [_burst(proxy_server, 32) for _ in range(3)]
    held = sum(bursts, Counter())
    assert sum(held.values()) == 96
    # Taking turns is a race each time (a worker held up for a moment misses its turns), so over three bursts.
    assert len(held) == 2 and min(held.values()) >= 24, f"connections per worker: {[dict(b) for b in bursts]}"
