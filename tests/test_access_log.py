"""One log line per proxied request, plain or JSON (LOG_FORMAT), read from a real server's log: what identifies and
measures the request, and never the token, the upstream key or the body."""

import json
import logging
import re
import sys
import time
import uuid

import httpx
import openai
import pytest
from django.db import connection
from django.utils import timezone

from llmproxy.logs import JsonFormatter, TextFormatter
from proxy.access_log import log_request
from proxy.writer import Record, _row
from tests.conftest import VALID_KEY
from tests.live import TEST_SERVER_ENV, database_url, start_server

pytestmark = pytest.mark.usefixtures("live_db")

SECRET_WORD = "body-secret-8d1f"  # sent in a request body: it must never reach the log
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": SECRET_WORD}]}


def wait_for_line(log, request_id: str, timeout: float = 5) -> str:
    """The log line of the request with this ID (written just after its response)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in log.read_text(errors="replace").splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, f"expected one line for {request_id}, found {lines}"
            return lines[0]
        time.sleep(0.05)


def plain_fields(line: str) -> dict[str, str]:
    """The `key=value` pairs of a plain line (quoted values are JSON strings)."""
    return {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
    }


def assert_no_secret(text: str, *secrets: str) -> None:
    for value in (*secrets, VALID_KEY, SECRET_WORD, "Bearer"):
        assert value not in text


@pytest.fixture
def issued(make_project, make_token):
    return make_token(make_project(name="Logged project"))


def test_plain_lines_for_a_request_a_stream_and_a_refusal(proxy_server, upstream, issued):
    client = openai.OpenAI(base_url=proxy_server.base_url, api_key=issued.plaintext, max_retries=0)
    plain_id, stream_id, refused_id = (uuid.uuid4().hex for _ in range(3))

    client.chat.completions.create(**CHAT, extra_headers={"X-Request-ID": plain_id})
    stream = client.chat.completions.create(**CHAT, stream=True, extra_headers={"X-Request-ID": stream_id})
    assert len(list(stream)) == 4
    refused = httpx.post(
        f"{proxy_server.base_url}/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer sk-wt-" + "Q" * 32, "X-Request-ID": refused_id},
    )
    assert refused.status_code == 401

    line = wait_for_line(proxy_server.log, plain_id)
    assert " INFO proxy.access POST /v1/chat/completions 200 " in line
    fields = plain_fields(line)
    assert fields["request_id"] == plain_id and fields["status"] == "200"
    assert fields["project"] == "Logged project" and fields["project_id"] == str(issued.token.project_id)
    assert fields["token_prefix"] == issued.token.prefix and fields["model"] == "gpt-4o"
    assert (fields["streamed"], fields["prompt_tokens"], fields["completion_tokens"]) == ("false", "11", "7")
    assert float(fields["duration_ms"]) >= float(fields["upstream_ms"]) > 0 and float(fields["ttfb_ms"]) > 0
    assert (fields["client_ip"], fields["refusal_code"], fields["client_aborted"]) == ("127.0.0.1", "-", "false")

    streamed = plain_fields(wait_for_line(proxy_server.log, stream_id))
    assert (streamed["streamed"], streamed["completion_tokens"]) == ("true", "3")

    refusal = plain_fields(wait_for_line(proxy_server.log, refused_id))
    assert (refusal["status"], refusal["refusal_code"], refusal["token_prefix"]) == (
        "401",
        "invalid_token",
        "sk-wt-QQQQQQ",
    )
    assert refusal["project"] == "-" and refusal["upstream_ms"] == "-"

    log = proxy_server.log.read_text()
    assert_no_secret(log, issued.plaintext, "sk-wt-" + "Q" * 32)
    assert "Unauthorized: /v1/" not in log, "Django's own warning would repeat the access line"


@pytest.fixture(scope="module")
def json_server(django_db_setup, django_db_blocker, mock_upstream, tmp_path_factory):
    """A server logging JSON, at INFO so that gunicorn's and uvicorn's own lines show too."""
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path_factory.mktemp("json-server") / "server.log",
        env={**TEST_SERVER_ENV, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
    )
    yield server
    server.stop()


def test_json_lines_for_every_request_and_the_servers_own_lines(json_server, upstream, issued):
    client = openai.OpenAI(base_url=json_server.base_url, api_key=issued.plaintext, max_retries=0)
    request_id = uuid.uuid4().hex
    stream = client.chat.completions.create(**CHAT, stream=True, extra_headers={"X-Request-ID": request_id})
    assert len(list(stream)) == 4
    missing_id = uuid.uuid4().hex
    httpx.post(f"{json_server.base_url}/chat/completions", json=CHAT, headers={"X-Request-ID": missing_id})

    entry = json.loads(wait_for_line(json_server.log, request_id))
    assert entry["logger"] == "proxy.access" and entry["level"] == "INFO"
    assert entry["message"] == "POST /v1/chat/completions 200"
    assert entry["time"].endswith("Z")
    assert {k: entry[k] for k in ("request_id", "status", "project", "token_prefix", "model", "streamed")} == {
        "request_id": request_id,
        "status": 200,
        "project": "Logged project",
        "token_prefix": issued.token.prefix,
        "model": "gpt-4o",
        "streamed": True,
    }
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["client_aborted"]) == (11, 3, False)
    assert all(isinstance(entry[k], float) for k in ("duration_ms", "ttfb_ms", "upstream_ms"))
    refusal = json.loads(wait_for_line(json_server.log, missing_id))
    assert (refusal["status"], refusal["refusal_code"], refusal["token_prefix"]) == (401, "missing_token", None)

    text = json_server.log.read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    loggers = {entry["logger"] for entry in entries}
    assert {"gunicorn.error", "uvicorn.error", "proxy.access"} <= loggers
    assert_no_secret(text, issued.plaintext)


def log_record(**extra) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "proxy.access", "levelno": 20, "levelname": "INFO", "msg": "hello", **extra})


def test_the_formatters_quote_and_escape_what_a_client_chose():
    fields = {"path": "/v1/a b\nc", "model": 'x"=y', "ttfb_ms": None, "streamed": False, "status": 200}

    text = TextFormatter("%(message)s").format(log_record(fields=fields))
    assert text == 'hello path="/v1/a b\\nc" model="x\\"=y" ttfb_ms=- streamed=false status=200'

    document = json.loads(JsonFormatter().format(log_record(fields=fields, status_code=404)))
    assert document["path"] == "/v1/a b\nc" and document["ttfb_ms"] is None and document["status_code"] == 404
    try:
        raise ValueError("boom")
    except ValueError:
        failed = log_record(levelname="ERROR", exc_info=sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exception"]


def test_a_key_sent_as_the_model_or_in_the_path_is_cut_to_its_display_prefix(caplog):
    record = Record(
        time=timezone.now(),
        method="POST",
        path=f"/v1/files/{VALID_KEY}",
        status=404,
        duration_ms=1.0,
        request_id="r1",
        client_ip="127.0.0.1",
        model=VALID_KEY,
        refusal_code="endpoint_not_allowed",
    )
    row = _row(record)  # as the usage writer makes the row it stores, counts and logs
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        log_request(row, "")

    (logged,) = caplog.records
    assert VALID_KEY not in logged.getMessage() and VALID_KEY not in json.dumps(logged.fields)
    assert logged.fields["model"] == VALID_KEY[:12] + "…"
    assert VALID_KEY not in row["path"] and VALID_KEY not in row["model"]  # nor stored, nor a metrics label
