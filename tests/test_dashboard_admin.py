"""The admin home is a dashboard: projects and tokens at a glance, recent activity, quick actions."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from llmproxy.audit import Actor
from projects.services import project_create
from tests.conftest import OTHER_KEY, VALID_KEY
from tokens.models import Token
from tokens.services import project_set_active, token_revoke

pytestmark = pytest.mark.django_db

HOME = reverse("admin:index")


def stat(text: str, name: str) -> str:
    return text.split(f'id="stat-{name}"', 1)[1].split("</div>", 1)[0]


def test_dashboard_counts_projects_and_tokens(admin_client, make_project, make_token, operator):
    assert not settings.DEBUG
    live, other = make_project("Live"), make_project("Other")
    make_token(live, hours=2)  # active, expires within 24 h
    make_token(live, hours=48)  # active
    token_revoke(token=make_token(live, hours=48).token, actor=operator)
    expired = make_token(live, hours=48).token
    Token.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    make_token(other, hours=2)  # blocked: its project goes inactive
    project_set_active(active=False, project=other, actor=operator)
    make_project("Third")

    response = admin_client.get(HOME)
    text = response.content.decode()
    assert response.status_code == 200 and "<h1>Dashboard</h1>" in text
    assert response.context["project_counts"] == {"total": 3, "active": 2}
    assert response.context["token_counts"] == {"active": 2, "expiring_24h": 1}
    assert ">3</a>" in stat(text, "projects") and ">2</a>" in stat(text, "active-projects")
    assert ">2</a>" in stat(text, "active-tokens") and ">1</span>" in stat(text, "expiring-tokens")
    assert "Tokens expiring within 24 h" in text
    assert VALID_KEY not in text and OTHER_KEY not in text


def test_dashboard_shows_recent_activity_with_actor_and_link(admin_client, make_project):
    for i in range(12):
        make_project(f"Old {i}")
    project = project_create(name="Newest", api_key=VALID_KEY, actor=Actor.cli("command line (root)"))
    text = admin_client.get(HOME).content.decode()
    recent = text.split('id="recent-actions-module"', 1)[1]
    assert recent.count('class="addlink audit-entry"') == 10
    assert f'<a href="{reverse("admin:projects_project_change", args=[project.pk])}">Newest</a>' in recent
    assert "by command line (root)" in recent and "by operator" in recent
    assert f'href="{reverse("admin:auditlog_logentry_changelist")}"' in recent


def test_dashboard_quick_actions_and_app_list(admin_client):
    text = admin_client.get(HOME).content.decode()
    actions = text.split('class="quick-actions"', 1)[1].split("</div>", 1)[0]
    assert f'href="{reverse("admin:projects_project_add")}">New project<' in actions
    assert f'href="{reverse("admin:tokens_token_add")}">Generate token<' in actions
    assert "app-projects module" in text and "app-tokens module" in text
    assert "No activity yet." in text


def test_quick_actions_follow_permissions(client, django_user_model):
    viewer = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_project"))
    client.force_login(viewer)
    text = client.get(HOME).content.decode()
    assert "New project" not in text and "Generate token" not in text
    assert "app-projects module" in text and "app-tokens module" not in text


def test_dashboard_spend_budget_alerts_and_expiring_soon(admin_client, make_project, make_token, operator):
    from decimal import Decimal

    from projects.services import project_set_limits
    from proxy.models import BudgetAlert, UsageDaily
    from proxy.selectors import utc_today

    project = make_project("Budgeted")
    soon = make_token(project, hours=2, label="ci run").token
    make_token(project, hours=48)
    today = utc_today()
    UsageDaily.objects.create(day=today, project=project, model="gpt-4o", requests=3, cost_usd=Decimal("1.25"))
    if today.day > 1:  # earlier this month: counts for the month, not for today
        UsageDaily.objects.create(
            day=today.replace(day=1), project=project, model="gpt-4o", requests=1, cost_usd=Decimal("2.00")
        )
    month = Decimal("3.25") if today.day > 1 else Decimal("1.25")
    project = project_set_limits(project=project, actor=operator, budget_usd=Decimal("10"), budget_period="month")
    BudgetAlert.objects.create(
        project=project,
        period="month",
        period_key=1,
        threshold=80,
        budget_usd=Decimal("10"),
        spent_usd=Decimal("8.10"),
    )

    text = admin_client.get(HOME).content.decode()
    assert ">$1.25</span>" in stat(text, "spend-today") and "Spend today" in stat(text, "spend-today")
    assert f">${month}</span>" in stat(text, "spend-month")
    alerts = text.split('id="budget-alerts"', 1)[1].split("</ul>", 1)[0]
    assert ">Budgeted</a>" in alerts and "reached 80 % of its month budget: $8.10 of $10.00" in alerts
    expiring = text.split('id="expiring-soon"', 1)[1].split("</table>", 1)[0]
    assert f'href="{reverse("admin:tokens_token_change", args=[soon.pk])}"><code>{soon.prefix}…</code>' in expiring
    assert expiring.count("<code>") == 1 and "in 1\xa0hour<" in expiring


def test_dashboard_without_spend_or_alerts(admin_client):
    text = admin_client.get(HOME).content.decode()
    assert ">$0.00</span>" in stat(text, "spend-today") and 'id="budget-alerts"' not in text
    assert "No token expires within 24 hours." in text
