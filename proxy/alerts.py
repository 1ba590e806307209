"""Budget alerts: when a project's spend crosses 80 % and 100 % of its budget, one alert per threshold and period.

The usage writer checks the projects of each batch it writes (off the request path). An alert is a row whose key is
(project, period, threshold), inserted if absent, so of any number of workers and instances exactly one writes it,
and that one logs it, counts it and, when ALERT_WEBHOOK_URL is set, posts it there from a thread of its own, with a
few retries (the attempts and the outcome are kept on the row).
"""

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.limits import period_key, period_start
from projects.models import Project

from . import metrics
from .models import BudgetAlert

logger = logging.getLogger(__name__)

THRESHOLDS = (80, 100)


def check_budgets(project_ids: set[UUID], now: datetime | None = None) -> list[BudgetAlert]:
    """New alerts for the projects whose spend of this period has crossed a threshold (in the caller's
    transaction)."""
    now = now or timezone.now()
    created = []
    for project in Project.objects.filter(pk__in=project_ids, budget_usd__isnull=False):
        spent = project.spent_in_period(now)
        for threshold in THRESHOLDS:
            if spent * 100 >= project.budget_usd * threshold:
                alert = _create(project, threshold, spent, now)
                if alert is not None:
                    created.append(alert)
    return created


def _create(project: Project, threshold: int, spent: Decimal, now: datetime) -> BudgetAlert | None:
    start = period_start(project.budget_period, now)
    try:
        with transaction.atomic():
            return BudgetAlert.objects.create(
                project=project,
                period=project.budget_period,
                period_key=period_key(project.budget_period, now),
                period_start=start,
                threshold=threshold,
                budget_usd=project.budget_usd,
                spent_usd=spent,
            )
    except IntegrityError:
        return None  # this period's alert for this threshold exists already


def announce(alerts: list[BudgetAlert]) -> None:
    """After the alerts' transaction: a log line and a metric each, and the webhook."""
    for alert in alerts:
        logger.warning(
            "project %s reached %d%% of its %s budget: %s of %s",
            alert.project.name,
            alert.threshold,
            alert.period,
            alert.spent_usd,
            alert.budget_usd,
        )
        metrics.BUDGET_ALERTS.labels(alert.project.name, str(alert.threshold)).inc()
        if settings.ALERT_WEBHOOK_URL:
            webhook.send(alert.pk)


def payload(alert: BudgetAlert) -> dict:
    return {
        "event": "budget_threshold",
        "project": {"id": str(alert.project_id), "name": alert.project.name},
        "threshold_percent": alert.threshold,
        "budget_usd": str(alert.budget_usd),
        "spent_usd": str(alert.spent_usd),
        "period": alert.period,
        "period_start": alert.period_start.isoformat() if alert.period_start else None,
        "resets_at": resets_at.isoformat() if (resets_at := alert.project.budget_resets_at(alert.created_at)) else None,
        "at": alert.created_at.astimezone(UTC).isoformat(),
    }


class Webhook:
    """One thread per process that posts alerts to ALERT_WEBHOOK_URL: never on a request's path."""

    RETRY_DELAYS = (1.0, 5.0, 25.0)  # after the first attempt: four in all, then the alert stays undelivered

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, alert_id: int) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
                self._thread.start()
        self._queue.put(alert_id)

    def _run(self) -> None:
        while True:
            alert_id = self._queue.get()
            try:
                self._deliver(alert_id)
            except Exception:
                logger.exception("could not post budget alert %s", alert_id)

    def _deliver(self, alert_id: int) -> None:
        alert = BudgetAlert.objects.select_related("project").get(pk=alert_id)
        body = payload(alert)
        error = ""
        for attempt, delay in enumerate((0.0, *self.RETRY_DELAYS), start=1):
            time.sleep(delay)
            try:
                response = httpx.post(settings.ALERT_WEBHOOK_URL, json=body, timeout=10)
                if response.is_success:
                    BudgetAlert.objects.filter(pk=alert_id).update(
                        delivered_at=timezone.now(), attempts=attempt, delivery_error=""
                    )
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            BudgetAlert.objects.filter(pk=alert_id).update(attempts=attempt, delivery_error=error)
        logger.error("budget alert %s not delivered to the webhook after %d attempts: %s", alert_id, attempt, error)


webhook = Webhook()
