"""The audit list: every operator action with who (user or program), from where, how, when; filters; read-only."""

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django.utils import timezone

from llmproxy.audit import Actor
from projects.models import Project
from projects.services import project_create
from tests.conftest import OTHER_KEY, VALID_KEY
from tokens.models import Token
from tokens.services import project_set_active, project_tokens_revoke

pytestmark = pytest.mark.django_db

AUDIT = reverse("admin:auditlog_logentry_changelist")
MANAGEMENT = Actor(via="api", label="management token", remote_addr="192.0.2.7")


@pytest.fixture
def trail(make_project, make_token, operator):
    """A project made by the operator in the admin, one by the management API, one from the command line."""
    admin_made = make_project("Admin made")
    make_token(admin_made)
    api_made = project_create(name="API made", api_key=OTHER_KEY, actor=MANAGEMENT)
    cli_made = project_create(name="CLI made", api_key=VALID_KEY, actor=Actor.cli("command line (root)"))
    project_set_active(active=False, project=cli_made, actor=Actor.cli("command line (root)"))
    return {"admin": admin_made, "api": api_made, "cli": cli_made}


def reprs(client, query: str = "") -> list[str]:
    response = client.get(AUDIT + query)
    assert response.status_code == 200
    return [entry.object_repr for entry in response.context["cl"].result_list]


def test_audit_list_shows_actor_address_and_channel(admin_client, trail):
    response = admin_client.get(AUDIT)
    text = response.content.decode()
    assert "<h1>Audit log</h1>" in text
    assert '<td class="field-actor_display">operator</td>' in text
    assert '<td class="field-actor_display">management token</td>' in text
    assert '<td class="field-actor_display">command line (root)</td>' in text
    assert (
        '<td class="field-remote_addr">10.1.2.3</td>' in text and '<td class="field-remote_addr">192.0.2.7</td>' in text
    )
    for via in ("admin", "api", "cli"):
        assert f'<td class="field-via">{via}</td>' in text
    assert f'href="{reverse("admin:projects_project_change", args=[trail["api"].pk])}"' in text
    assert VALID_KEY not in text and OTHER_KEY not in text


def test_audit_list_filters(admin_client, admin_user, trail):
    text = admin_client.get(AUDIT).content.decode()
    for title in ("By action", "By actor", "By object type", "By timestamp"):
        assert title in text
    assert len(reprs(admin_client)) == 5

    assert sorted(reprs(admin_client, f"?action__exact={LogEntry.Action.UPDATE}")) == ["CLI made"]
    assert len(reprs(admin_client, f"?action__exact={LogEntry.Action.CREATE}")) == 4

    assert len(reprs(admin_client, f"?actor=user:{admin_user.pk}")) == 2
    assert reprs(admin_client, "?actor=label:management token") == ["API made"]
    assert reprs(admin_client, "?actor=label:command line (root)") == ["CLI made", "CLI made"]

    token_type = ContentType.objects.get_for_model(Token)
    assert len(reprs(admin_client, f"?content_type__id__exact={token_type.pk}")) == 1

    LogEntry.objects.filter(object_repr="API made").update(timestamp=timezone.now() - timedelta(days=30))
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week = {"timestamp__gte": midnight - timedelta(days=7), "timestamp__lt": midnight + timedelta(days=1)}
    past_week = reprs(admin_client, "?" + urlencode(week))
    assert "API made" not in past_week and len(past_week) == 4
    today = midnight.date()
    assert len(reprs(admin_client, f"?timestamp__year={today.year}&timestamp__month={today.month}")) >= 4


def test_audit_list_search(admin_client, trail):
    assert reprs(admin_client, "?q=API made") == ["API made"]
    assert reprs(admin_client, "?q=management") == ["API made"]
    assert len(reprs(admin_client, "?q=operator")) == 2
    assert len(reprs(admin_client, f"?q={trail['cli'].pk}")) == 2


def test_bulk_revocation_logs_every_token_with_its_actor(admin_client, make_project, make_token, operator):
    project = make_project()
    for _ in range(3):
        make_token(project)
    project_tokens_revoke(project=project, actor=MANAGEMENT)
    updates = reprs(admin_client, f"?action__exact={LogEntry.Action.UPDATE}&actor=label:management token")
    assert len(updates) == 3


def test_audit_entries_are_read_only(admin_client, trail):
    entry = LogEntry.objects.get_for_object(trail["api"]).get()
    assert admin_client.get(reverse("admin:auditlog_logentry_add")).status_code == 403
    detail = admin_client.get(reverse("admin:auditlog_logentry_change", args=[entry.pk]))
    text = detail.content.decode()
    assert detail.status_code == 200
    for value in ("management token", "192.0.2.7", "api"):
        assert f'<div class="readonly">{value}</div>' in text
    assert "<tr><td>Name</td><td>None</td><td>API made</td></tr>" in text
    assert ".None<" not in text, "reverse relations are not changes"
    assert 'name="_save"' not in text and "deletelink" not in text
    assert admin_client.post(reverse("admin:auditlog_logentry_change", args=[entry.pk]), {}).status_code == 403
    assert admin_client.post(reverse("admin:auditlog_logentry_delete", args=[entry.pk])).status_code == 403
    assert "delete_selected" not in admin_client.get(AUDIT).content.decode()
    assert LogEntry.objects.filter(pk=entry.pk).exists()
    assert Project.objects.count() == 3
