"""HTTP/1.1 requests sent exactly as written, on a raw socket: httpx and the SDK normalise a path (dot segments,
backslashes) before it goes on the wire, so what they send is not always what a test means to send. h11 frames the
exchange; of the request target it only checks that it is printable ASCII."""

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(url: str, target: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> RawResponse:
    """`url` names the server (scheme, host, port); `target` goes on the request line as it is."""
    address = urlsplit(url)
    connection = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method=method,
        target=target,
        headers=[("Host", address.netloc), ("Connection", "close"), *(headers or {}).items()],
    )
    response, body = None, b""
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(connection.send(request) + connection.send(h11.EndOfMessage()))
        while not isinstance(event := connection.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                connection.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
    headers = {name.decode(): value.decode("latin-1") for name, value in response.headers}
    return RawResponse(response.status_code, headers, body)
