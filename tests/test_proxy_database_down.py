"""With its database down, the proxy refuses in OpenAI's envelope (503, retryable) instead of an HTML error page."""

import httpx
import pytest

from tests.live import TEST_SERVER_ENV, start_server

TOKEN = "sk-wt-" + "A" * 32


@pytest.mark.parametrize(
    "database",
    [
        "postgres://postgres@127.0.0.1:1/nowhere",  # nothing listens on port 1
        "sqlite:////nonexistent-directory/llmproxy.sqlite3",
    ],
    ids=["postgresql", "sqlite"],
)
def test_database_down_gives_a_retryable_503(database, mock_upstream, tmp_path):
    server = start_server(
        database=database,
        upstream_url=mock_upstream.base_url,
        log=tmp_path / "server.log",
        env={**TEST_SERVER_ENV, "DATABASE_POOL_TIMEOUT": "1"},
        workers=1,
    )
    try:
        response = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15)
    finally:
        server.stop()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "database" in response.json()["error"]["message"]
    assert mock_upstream.violations == []
