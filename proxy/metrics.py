"""Prometheus metrics of the proxy, served at `/metrics`.

Under gunicorn every worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py creates and
empties it at start) and `/metrics` adds up all workers' files, so a scrape sees the whole server whichever worker
answers it. Without that directory (tests, runserver) the process's own registry is served.

Per-request values are counted by the usage writer thread from the same rows it stores (see
`proxy.writer.UsageWriter`), not on the event loop: token counts of JSON bodies are only known there. Only the
streams-in-flight gauge moves on the event loop, as a stream starts and ends.

Label values stay bounded: `project` is the project's name (operators create projects; a rename starts a new
series), `model` is a model the upstream has answered with success at least once (at most METRICS_MAX_MODELS per
process, then `other`), since clients can send any string as a model.
"""

import hmac
import os
import time
from collections.abc import Iterable
from uuid import UUID

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tokens import secret

# Seconds: from a few milliseconds (a refusal) to the longest streams.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "llmproxy_requests", "Requests through the proxy, refusals included.", ["project", "status_class", "model"]
)
REQUEST_DURATION = Histogram(
    "llmproxy_request_duration_seconds",
    "Time from the request's arrival to the last byte sent (streamed: server-sent events).",
    ["streamed"],
    buckets=DURATION_BUCKETS,
)
TIME_TO_FIRST_BYTE = Histogram(
    "llmproxy_time_to_first_byte_seconds",
    "Time from the request's arrival to the first body byte sent to the client.",
    ["streamed"],
    buckets=DURATION_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "llmproxy_upstream_duration_seconds",
    "Time from sending the request upstream to the end of its response.",
    ["streamed"],
    buckets=DURATION_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "llmproxy_prompt_tokens", "Prompt (input) tokens reported by the upstream.", ["project", "model"]
)
COMPLETION_TOKENS = Counter(
    "llmproxy_completion_tokens", "Completion (output) tokens reported by the upstream.", ["project", "model"]
)
STREAMS_IN_FLIGHT = Gauge(
    "llmproxy_streams_in_flight", "Streamed responses being relayed right now.", multiprocess_mode="livesum"
)
CACHE_REQUESTS = Counter(
    "llmproxy_cache_requests",
    "Requests of projects with the response cache on, by X-Cache result (hit, miss, bypass, stored).",
    ["project", "result"],
)
REFUSALS = Counter("llmproxy_refusals", "Requests the proxy refused itself, by refusal code.", ["code"])
BUDGET_ALERTS = Counter(
    "llmproxy_budget_alerts", "Project budgets crossing 80 or 100 % in a period.", ["project", "threshold"]
)
COST = Counter("llmproxy_cost_usd", "What requests cost, in US dollars, at the models' prices.", ["project", "model"])
USAGE_BACKLOG = Gauge(
    "llmproxy_usage_backlog",
    "Usage records not in the database yet: waiting, being written, or kept in spill files.",
    multiprocess_mode="livesum",
)
USAGE_WRITE_FAILURES = Counter("llmproxy_usage_write_failures", "Usage batch writes that failed (and were kept).")
USAGE_SPILLED = Counter("llmproxy_usage_spilled", "Usage records kept in a spill file while the database was away.")
USAGE_REPLAYED = Counter("llmproxy_usage_replayed", "Usage records written back from spill files.")
USAGE_DROPPED = Counter(
    "llmproxy_usage_dropped", "Usage records lost: refused by the database, or with neither database nor disk."
)

OTHER_MODEL = "other"


class ProjectNames:
    """Project names by id for the `project` label, read again after `TTL` seconds so a rename shows."""

    TTL = 300.0

    def __init__(self) -> None:
        self._names: dict[UUID, tuple[str, float]] = {}

    RETRY = 30.0  # seconds before names that could not be read are tried again (the database was away)

    def stale(self, ids: Iterable[UUID | None]) -> set[UUID]:
        expired = time.monotonic() - self.TTL
        return {pk for pk in ids if pk is not None and (pk not in self._names or self._names[pk][1] < expired)}

    def postpone(self, ids: set[UUID]) -> None:
        """Names that could not be read: keep what is known (or the id) and try again in `RETRY` seconds."""
        retry = time.monotonic() - self.TTL + self.RETRY
        for pk in ids:
            self._names[pk] = (self.label(pk), retry)

    def load(self, ids: set[UUID]) -> None:
        """Read these names (on a proxy database thread)."""
        from projects.models import Project

        now = time.monotonic()
        for pk, name in Project.objects.filter(pk__in=ids).values_list("pk", "name"):
            self._names[pk] = (name, now)

    def label(self, pk: UUID | None) -> str:
        if pk is None:
            return ""
        known = self._names.get(pk)
        return known[0] if known is not None else str(pk)


class ModelLabels:
    """The models used as label values: those the upstream accepted (a 2xx), up to a bound; any other is `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._accepted: set[str] = set()

    def label(self, model: str, status: int) -> str:
        if not model or model in self._accepted:
            return model
        if 200 <= status < 300 and len(self._accepted) < self.limit and len(model) <= 100 and model.isprintable():
            self._accepted.add(model)
            return model
        return OTHER_MODEL


project_names = ProjectNames()
_models: ModelLabels | None = None


def _model_label(model: str, status: int) -> str:
    global _models
    if _models is None:
        _models = ModelLabels(settings.METRICS_MAX_MODELS)
    return _models.label(model, status)


_children: dict[tuple, object] = {}


def _labelled(metric, *values: str):
    """`metric.labels(*values)`, kept: prometheus_client checks and converts the values and takes a lock on each call
    (about 3 µs, six calls per request). Bounded as the label values are (see the module's doc)."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def count(row: dict, project: str) -> None:
    """Count one finished request, from its usage row (in the usage writer thread)."""
    status = row["status"]
    model = _model_label(row["model"], status)
    streamed = "true" if row["streamed"] else "false"
    _labelled(REQUESTS, project, f"{status // 100}xx", model).inc()
    _labelled(REQUEST_DURATION, streamed).observe(row["duration_ms"] / 1000)
    if row["ttfb_ms"] is not None:
        _labelled(TIME_TO_FIRST_BYTE, streamed).observe(row["ttfb_ms"] / 1000)
    if row["upstream_ms"] is not None:
        _labelled(UPSTREAM_DURATION, streamed).observe(row["upstream_ms"] / 1000)
    if row.get("prompt_tokens"):
        _labelled(PROMPT_TOKENS, project, model).inc(row["prompt_tokens"])
    if row.get("completion_tokens"):
        _labelled(COMPLETION_TOKENS, project, model).inc(row["completion_tokens"])
    if row["refusal_code"]:
        _labelled(REFUSALS, row["refusal_code"]).inc()
    if row.get("cache"):
        _labelled(CACHE_REQUESTS, project, row["cache"].lower()).inc()


def count_costs(rows: list[dict]) -> None:
    """Count what written rows cost (once each: a row is priced where it is written, see proxy.writer)."""
    for row in rows:
        if row.get("cost_usd"):
            model = _model_label(row["model"], row["status"])
            COST.labels(project_names.label(row["project_id"]), model).inc(float(row["cost_usd"]))


def exposition() -> bytes:
    """The text format of every metric: all workers' when running multi-process, else this process's."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return _generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return _generate_latest(registry)


def _authorised(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    if not expected:
        return True
    presented = secret.bearer(request.headers.get("Authorization", "")) or ""
    return hmac.compare_digest(presented.encode(), expected.encode())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: 404 when METRICS_ENABLED is off; with METRICS_TOKEN set, only for `Bearer <token>`."""
    if not settings.METRICS_ENABLED:
        raise Http404
    if not _authorised(request):
        return HttpResponse(
            "Unauthorized\n", status=401, content_type="text/plain", headers={"WWW-Authenticate": "Bearer"}
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
