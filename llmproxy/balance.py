"""New connections spread evenly over the workers, on Linux.

gunicorn's workers all wait on the master's one listening socket, and when connections arrive together (a client
opening its keep-alive pool, a load balancer opening its own) the worker that wakes first accepts every one that is
queued: measured on the shared benchmark, 32 connections opened at once gave one worker 90 % of the work and the
other 10 %, so a 2-worker server ran on one core. Kept-alive connections stay where they landed, so this lasts.

So each worker also listens on a socket of its own, bound to the same address with SO_REUSEPORT (the master's socket
has it too: gunicorn's `reuse_port`), and the group gets a classic BPF program that hands each new connection to
one of the workers' sockets at random. The master's socket is first in the group (index 0), so the program answers
1 + random % workers; an index that names no socket (a worker being replaced) makes the kernel pick by hash among
all of them, the master's included, which every worker still serves: no connection waits for a worker that is not
there.

A worker that exits closes its own socket, and a connection the kernel had queued on it but the worker had not yet
accepted is reset (unless `net.ipv4.tcp_migrate_req` is 1, which moves it to another worker). The worker accepts as
soon as its loop turns, so that queue is normally empty; REUSE_PORT=0 turns all of this off.
"""

import ctypes
import logging
import socket
import struct
import sys

logger = logging.getLogger("uvicorn.error")

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h

# Classic BPF: A = random; A %= workers; A += 1; return A.
_LD_W_ABS, _ALU_MOD_K, _ALU_ADD_K, _RET_A = 0x20, 0x94, 0x04, 0x16
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM


def _random_worker_program(workers: int) -> tuple[bytes, ctypes.Array]:
    """A `struct sock_fprog` for setsockopt, and the instructions it points to (kept alive by the caller)."""
    instructions = ((_LD_W_ABS, _SKF_AD_RANDOM), (_ALU_MOD_K, workers), (_ALU_ADD_K, 1), (_RET_A, 0))
    code = b"".join(struct.pack("HBBI", op, 0, 0, k) for op, k in instructions)
    buffer = ctypes.create_string_buffer(code, len(code))
    return struct.pack("HP", len(instructions), ctypes.addressof(buffer)), buffer


def own_sockets(inherited: list, workers: int, backlog: int) -> list[socket.socket]:
    """This worker's own listening sockets beside the inherited TCP ones that allow it (none elsewhere, or when the
    system refuses: the worker then serves the inherited ones alone, as before)."""
    if sys.platform != "linux" or workers < 2:
        return []
    own = []
    for shared in inherited:
        if shared.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        if not shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            continue
        mine = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if shared.family == socket.AF_INET6:
                v6only = shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                mine.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            mine.bind(shared.getsockname())
            mine.listen(backlog)  # joins the group (a program attached before would make a group of its own)
            program, _instructions = _random_worker_program(workers)
            mine.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, program)
            mine.setblocking(False)
        except OSError as error:
            mine.close()
            logger.warning("connections are not spread over the workers (%s): the shared socket alone", error)
            continue
        own.append(mine)
    return own
