"""Setting limits the three ways (API, commands, admin), validated alike; what the answers say of spend; budget alerts
written once per threshold and period, posted to a real webhook receiver."""

import io
import json
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from projects.models import Project
from projects.services import project_set_limits
from proxy.alerts import check_budgets, webhook
from proxy.models import BudgetAlert
from proxy.settlement import Charge, charge
from proxy.writer import Record, writer
from tests.test_usage_admin import record
from tokens.minting import minting_key_create
from tokens.models import Token

pytestmark = pytest.mark.django_db
MANAGEMENT_TOKEN = "test-management-token-spend-0123"


@pytest.fixture(autouse=True)
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


@pytest.fixture
def api(client):
    def call(method: str, path: str, body: dict | None = None, token: str = MANAGEMENT_TOKEN):
        response = getattr(client, method.lower())(
            path,
            json.dumps(body) if body is not None else None,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        return response.status_code, response.json() if response.content else None

    return call


# --- the API ------------------------------------------------------------------------------------------------------


def test_projects_and_tokens_take_limits_and_say_what_was_spent(api, make_project):
    status, project = api(
        "POST",
        "/manage/projects",
        {
            "name": "Limited",
            "api_key": "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
            "requests_per_minute": 60,
            "budget_usd": "500",
            "budget_period": "week",
        },
    )
    assert status == 201
    assert (project["requests_per_minute"], project["budget_usd"], project["budget_period"]) == (60, "500", "week")
    assert project["spent_usd"] == "0" and project["tokens_per_minute"] is None
    now = datetime.now(UTC)
    resets = datetime.fromisoformat(project["budget_resets_at"].replace("Z", "+00:00"))
    assert resets.weekday() == 0 and 0 < (resets - now).days < 7  # next Monday, 00:00 UTC

    status, issued = api(
        "POST",
        "/manage/tokens",
        {"project_id": project["id"], "duration_hours": 1, "budget_usd": 5, "tokens_per_minute": 1000},
    )
    assert status == 201 and (issued["budget_usd"], issued["tokens_per_minute"]) == ("5", 1000)
    status, token = api("PATCH", f"/manage/tokens/{issued['id']}", {"budget_usd": None, "requests_per_minute": 10})
    assert status == 200 and token["budget_usd"] is None and token["requests_per_minute"] == 10
    assert token["spent_usd"] == "0"

    status, changed = api("PATCH", f"/manage/projects/{project['id']}", {"tokens_per_minute": 5000})
    assert status == 200 and changed["tokens_per_minute"] == 5000 and changed["requests_per_minute"] == 60


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("requests_per_minute", 0, "out_of_range"),
        ("requests_per_minute", 1.5, "invalid_type"),
        ("requests_per_minute", "60", "invalid_type"),
        ("tokens_per_minute", -1, "out_of_range"),
        ("budget_usd", 0, "out_of_range"),
        ("budget_usd", "0.001", "invalid_format"),
        ("budget_usd", "five", "invalid_format"),
        ("budget_usd", True, "invalid_type"),
        ("budget_period", "year", "invalid_choice"),
    ],
)
def test_nonsense_limits_are_refused_naming_the_field(api, make_project, field, value, code):
    project = make_project()
    status, body = api("PATCH", f"/manage/projects/{project.pk}", {field: value})
    assert (status, body["field"], body["code"]) == (400, field, code)
    assert Project.objects.get(pk=project.pk).requests_per_minute is None


def test_budgets_take_numbers_or_decimal_strings_and_keep_six_places(api, make_project, make_token):
    token = make_token(make_project()).token
    assert api("PATCH", f"/manage/tokens/{token.pk}", {"budget_usd": "0.015"})[1]["budget_usd"] == "0.015"
    assert api("PATCH", f"/manage/tokens/{token.pk}", {"budget_usd": 12.34})[1]["budget_usd"] == "12.34"
    assert api("PATCH", f"/manage/tokens/{token.pk}", {"budget_usd": "1.23456789"})[1]["budget_usd"] == "1.234568"


def test_a_minting_key_cannot_hand_out_more_than_its_project_has(api, make_project, operator):
    project = make_project()
    project_set_limits(project=project, actor=operator, requests_per_minute=100, budget_usd=Decimal("50"))
    key = minting_key_create(project=project, name="backend", actor=operator).plaintext
    body = {"project_id": str(project.pk), "duration_hours": 1}
    status, error = api("POST", "/manage/tokens", {**body, "budget_usd": "60"}, token=key)
    assert (status, error["code"], error["field"]) == (400, "exceeds_project_limit", "budget_usd")
    status, error = api("POST", "/manage/tokens", {**body, "requests_per_minute": 101}, token=key)
    assert (status, error["field"]) == (400, "requests_per_minute")
    status, issued = api("POST", "/manage/tokens", {**body, "requests_per_minute": 100, "budget_usd": 50}, token=key)
    assert status == 201 and issued["budget_usd"] == "50"
    # The management token is the operator: it may give a token limits of its own.
    assert api("POST", "/manage/tokens", {**body, "budget_usd": "60"})[0] == 201


def test_usage_summaries_carry_cost(api, make_project, make_token):
    from proxy.writer import Record, UsageWriter

    project = make_project()
    token = make_token(project).token
    UsageWriter().write(
        [
            Record(
                time=datetime.now(UTC),
                method="POST",
                path="/v1/chat/completions",
                status=200,
                duration_ms=1,
                request_id=f"r{i}",
                client_ip=None,
                project_id=project.pk,
                token_id=token.pk,
                model="gpt-4o",
                cost_usd=Decimal("0.25"),
            )
            for i in range(3)
        ]
    )
    status, summary = api("GET", f"/manage/usage?project_id={project.pk}&group_by=token")
    assert status == 200 and summary["rows"][0]["cost_usd"] == "0.75" and summary["totals"]["cost_usd"] == "0.75"
    assert Token.objects.get(pk=token.pk).spent_usd == Decimal("0.75")  # the writer charged what the relay did not
    assert Project.objects.get(pk=project.pk).spent_in_period(datetime.now(UTC)) == Decimal("0.75")


# --- commands -----------------------------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_set_project_limits_sets_changes_and_removes(make_project):
    project = make_project(name="cmd")
    out = run("set_project_limits", "cmd", "--rpm", "60", "--budget-usd", "500", "--budget-period", "day")
    assert "requests per minute 60" in out and "$500.00 per day" in out
    project.refresh_from_db()
    assert (project.requests_per_minute, project.budget_usd, project.budget_period) == (60, Decimal(500), "day")
    run("set_project_limits", "cmd", "--rpm", "none")
    project.refresh_from_db()
    assert project.requests_per_minute is None and project.budget_usd == Decimal(500)
    with pytest.raises(CommandError, match="requests_per_minute"):
        run("set_project_limits", "cmd", "--rpm", "0")
    with pytest.raises(CommandError, match="give at least one"):
        run("set_project_limits", "cmd")


def test_generate_token_takes_limits(make_project):
    make_project(name="gen")
    plaintext = run("generate_token", "--project", "gen", "--hours", "1", "--rpm", "5", "--budget-usd", "2.5").strip()
    token = Token.objects.get()
    assert plaintext.startswith("sk-wt-") and (token.requests_per_minute, token.budget_usd) == (5, Decimal("2.5"))


# --- alerts -------------------------------------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    received: list = []
    failures_left = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Receiver.failures_left:
            Receiver.failures_left -= 1
            self.send_response(503)
        else:
            Receiver.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver(settings):
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received, Receiver.failures_left = [], 1  # the first attempt fails: the retry delivers
    webhook.RETRY_DELAYS = (0.1, 0.1, 0.1)
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/alerts"
    yield Receiver
    server.shutdown()


@pytest.mark.django_db(transaction=True)
def test_budget_alerts_once_per_threshold_and_period_posted_to_the_webhook(receiver, make_project, make_token):
    from proxy.alerts import announce

    project = make_project(name="alerted")
    project.budget_usd = Decimal("10")
    project.save()
    token = make_token(project).token
    for amount, expected in (("7", []), ("1.5", [80]), ("0.2", []), ("1.5", [100]), ("5", [])):
        charge([Charge(token.pk, project.pk, Decimal(amount), 0)])
        alerts = check_budgets({project.pk})
        assert [a.threshold for a in alerts] == expected, amount
        announce(alerts)
    deadline = time.monotonic() + 5
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [body["threshold_percent"] for body in receiver.received] == [80, 100]
    first = receiver.received[0]
    assert first["project"]["name"] == "alerted" and first["budget_usd"] == "10.000000" and first["period"] == "month"
    alert = BudgetAlert.objects.get(threshold=80)
    assert alert.delivered_at is not None and alert.attempts == 2  # one failure, then delivered


@pytest.mark.django_db(transaction=True)
def test_the_usage_writer_checks_the_budget_of_a_project_it_charges(make_project, make_token):
    """A record the relay did not charge (the budget was set after its request was admitted) is charged by the usage
    writer, which then sees the budget crossed; a project without a budget gets no alert. One batch, three projects:
    each is charged its own and judged by its own budget."""
    budgeted, plain, over = make_project(name="late budget"), make_project(name="no budget"), make_project(name="over")
    for project in (budgeted, over):
        project.budget_usd = Decimal("1")
        project.save()

    def charged(project, cost: str) -> Record:
        return record(project=project, token=make_token(project).token, model="gpt-4o", cost_usd=Decimal(cost))

    assert writer.write([charged(budgeted, "0.9"), charged(plain, "5"), charged(over, "1.2")]) == 3
    alerts = {(a.project_id, a.threshold) for a in BudgetAlert.objects.all()}
    assert alerts == {(budgeted.pk, 80), (over.pk, 80), (over.pk, 100)}
    spent = {p.pk: p.spent_usd for p in Project.objects.all()}
    assert (spent[budgeted.pk], spent[plain.pk], spent[over.pk]) == (Decimal("0.9"), Decimal("5"), Decimal("1.2"))
