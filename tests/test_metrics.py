"""`/metrics`: Prometheus text from every gunicorn worker at once, protected or disabled by settings."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from django.db import connection
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from proxy import metrics
from tests.live import TEST_SERVER_ENV, database_url, start_server, wait_for_usage

METRICS_TOKEN = "metrics-scrape-secret"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, by name and sorted labels (parsed by prometheus-client's own parser)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


# --- settings, through Django's test client (one process: its own registry) ----------------------------------------
def test_metrics_are_served_from_the_process_registry_without_gunicorn(client, settings, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=")
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {
        "llmproxy_requests",
        "llmproxy_request_duration_seconds",
        "llmproxy_time_to_first_byte_seconds",
        "llmproxy_upstream_duration_seconds",
        "llmproxy_prompt_tokens",
        "llmproxy_completion_tokens",
        "llmproxy_streams_in_flight",
        "llmproxy_refusals",
    } <= families
    assert client.post("/metrics").status_code == 405


def test_a_metrics_token_is_required_when_set(client, settings):
    settings.METRICS_TOKEN = METRICS_TOKEN

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=METRICS_TOKEN).status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}").status_code == 200


def test_metrics_can_be_turned_off(client, settings):
    settings.METRICS_ENABLED = False
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics").status_code == 404


def test_model_labels_stay_bounded():
    labels = metrics.ModelLabels(limit=2)

    assert labels.label("made-up", 404) == "other"  # never accepted by the upstream: no series of its own
    assert [labels.label(m, 200) for m in ("gpt-4o", "gpt-4o-mini", "gpt-5")] == ["gpt-4o", "gpt-4o-mini", "other"]
    assert labels.label("gpt-4o", 429) == "gpt-4o" and labels.label("", 401) == ""


# --- a real server: two gunicorn workers, their files added up --------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_server(django_db_setup, django_db_blocker, mock_upstream, tmp_path_factory):
    """gunicorn with 2 workers, a named metrics directory (holding a stale file from an earlier run) and a token."""
    directory = tmp_path_factory.mktemp("prometheus")
    (directory / "counter_1.db").write_bytes(b"left over from an earlier run")
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path_factory.mktemp("metrics-server") / "server.log",
        env={**TEST_SERVER_ENV, "PROMETHEUS_MULTIPROC_DIR": str(directory), "METRICS_TOKEN": METRICS_TOKEN},
    )
    server.metrics_dir = directory
    yield server
    server.stop()


def scrape(server) -> dict:
    response = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert response.status_code == 200
    return samples(response.text)


def worker_requests(directory: Path, pid: int, tmp_path: Path) -> float:
    """The requests one worker counted: its own counter file, read alone."""
    alone = tmp_path / str(pid)
    alone.mkdir()
    shutil.copy(directory / f"counter_{pid}.db", alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return sum(s.value for f in registry.collect() if f.name == "llmproxy_requests" for s in f.samples)


@pytest.mark.usefixtures("live_db")
def test_counts_from_both_workers_add_up(metrics_server, upstream, make_project, make_token, tmp_path):
    assert not (metrics_server.metrics_dir / "counter_1.db").exists(), "the directory is emptied at start"
    assert httpx.get(f"{metrics_server.url}/metrics", timeout=5).status_code == 401
    project = make_project(name="Metered")
    issued = make_token(project)

    def chat(_) -> int:
        # A new connection each time, so that both workers take some.
        client = openai.OpenAI(base_url=metrics_server.base_url, api_key=issued.plaintext, max_retries=0)
        with client:
            client.chat.completions.create(**CHAT, extra_headers={"x-mock-delay": "0.02"})
        return 1

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(chat, range(40))) == 40
    for token in ["sk-wt-" + "N" * 32, "sk-wt-" + "M" * 32]:
        httpx.post(
            f"{metrics_server.base_url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"}
        )
    httpx.post(f"{metrics_server.base_url}/chat/completions", json=CHAT)
    assert len(wait_for_usage(43)) == 43  # metrics are counted before the records are written

    found = scrape(metrics_server)
    assert value(found, "llmproxy_requests_total", project="Metered", status_class="2xx", model="gpt-4o") == 40
    assert value(found, "llmproxy_requests_total", project="", status_class="4xx", model="") == 3
    assert value(found, "llmproxy_refusals_total", code="invalid_token") == 2
    assert value(found, "llmproxy_refusals_total", code="missing_token") == 1
    assert value(found, "llmproxy_prompt_tokens_total", project="Metered", model="gpt-4o") == 40 * 11
    assert value(found, "llmproxy_completion_tokens_total", project="Metered", model="gpt-4o") == 40 * 7
    assert value(found, "llmproxy_request_duration_seconds_count", streamed="false") == 43
    assert value(found, "llmproxy_upstream_duration_seconds_count", streamed="false") == 40
    assert value(found, "llmproxy_upstream_duration_seconds_bucket", streamed="false", le="0.01") == 0  # 20 ms delay
    assert value(found, "llmproxy_time_to_first_byte_seconds_count", streamed="false") == 40

    workers = metrics_server.pids()[1:]
    per_worker = [worker_requests(metrics_server.metrics_dir, pid, tmp_path) for pid in workers]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), f"both workers served requests: {per_worker}"
    assert sum(per_worker) == 43


@pytest.mark.usefixtures("live_db")
def test_streams_in_flight(metrics_server, upstream, make_project, make_token):
    issued = make_token(make_project())
    client = openai.OpenAI(base_url=metrics_server.base_url, api_key=issued.plaintext, max_retries=0)
    slow = {"x-mock-chunks": "10", "x-mock-chunk-delay": "0.1"}

    def stream(_) -> int:
        return len(list(client.chat.completions.create(**CHAT, stream=True, extra_headers=slow)))

    with ThreadPoolExecutor(3) as pool:
        running = pool.map(stream, range(3))
        deadline = time.monotonic() + 5
        while (during := value(scrape(metrics_server), "llmproxy_streams_in_flight")) < 3:
            assert time.monotonic() < deadline, f"streams in flight: {during}"
            time.sleep(0.05)
        assert list(running) == [11, 11, 11]
    wait_for_usage(3)

    found = scrape(metrics_server)
    assert value(found, "llmproxy_streams_in_flight") == 0
    assert value(found, "llmproxy_time_to_first_byte_seconds_count", streamed="true") == 3
    assert value(found, "llmproxy_request_duration_seconds_bucket", streamed="true", le="0.5") == 0  # about 1 s
