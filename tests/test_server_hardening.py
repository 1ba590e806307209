"""The server around the proxy: its static files, its production settings, its reloads."""

import asyncio

import pytest
from asgiref.testing import ApplicationCommunicator

from llmproxy.static import CollectedStaticFilesHandler
from tests.raw_http import raw_request

# Paths out of the static files, as sent (uvicorn decodes %2e and %2f before Django sees them).
TRAVERSALS = [
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/admin/../../../../../etc/passwd",
    "/static/admin/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/static/..%5c..%5c..%5cetc%5cpasswd",
]


# --- static files ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TRAVERSALS)
def test_a_path_out_of_the_static_files_is_not_found(proxy_server, target):
    response = raw_request(proxy_server.url, target)

    assert response.status == 404, response.body[:200]
    assert b"root:" not in response.body


def test_the_static_files_are_still_served(proxy_server):
    response = raw_request(proxy_server.url, "/static/admin/css/base.css")

    assert response.status == 200 and b"body" in response.body


async def get_status(application, path: str) -> int:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [], "client": None}
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    await communicator.wait(5)
    return start["status"]


def test_a_path_out_of_the_collected_static_files_is_not_found(settings, tmp_path):
    """As served in production: from `collectstatic`'s output (the test server has none, so it serves from the apps)."""
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STATIC_ROOT.mkdir()
    (settings.STATIC_ROOT / "site.css").write_text("body {}")
    (tmp_path / "secret.txt").write_text("root:x:0:0")

    async def not_static(scope, receive, send) -> None:
        raise AssertionError(f"{scope['path']} went past the static files")

    handler = CollectedStaticFilesHandler(not_static)
    assert asyncio.run(get_status(handler, "/static/site.css")) == 200
    for path in ("/static/../secret.txt", "/static/../../etc/passwd", "/static/admin/../../secret.txt"):
        assert asyncio.run(get_status(handler, path)) == 404, path
