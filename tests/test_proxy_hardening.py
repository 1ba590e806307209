"""The proxy against what it was not built for: bodies it cannot read, paths that say one thing raw and another
decoded, failures of its own; and what its log and its streams show then."""

import time
import uuid

import openai
import pytest

pytestmark = pytest.mark.usefixtures("live_db")

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def issued(make_project, make_token):
    return make_token(make_project())


def log_after(server, offset: int, request_id: str, timeout: float = 5) -> str:
    """What the server logged from `offset` on, once the access line of the request with this ID is there."""
    deadline = time.monotonic() + timeout
    while True:
        with server.log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        if f"request_id={request_id}" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize("status", ["500", "503"])
def test_an_upstream_5xx_passed_on_is_logged_by_the_access_line_alone(
    proxy_server, upstream, issued, openai_client, status
):
    offset = proxy_server.log.stat().st_size
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.InternalServerError) as raised:
        openai_client(issued.plaintext).chat.completions.create(
            **CHAT, extra_headers={"x-mock-status": status, "X-Request-ID": request_id}
        )

    assert raised.value.status_code == int(status)
    logged = log_after(proxy_server, offset, request_id)
    assert f"proxy.access POST /v1/chat/completions {status} request_id={request_id}" in logged
    assert "django.request" not in logged, "Django's own error line repeats the access line"
