"""The operator's project pages, through the admin with Django's test client (DEBUG off, as in production)."""

from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from projects.models import Project
from tests.conftest import OTHER_KEY, VALID_KEY
from tokens.models import Token
from tokens.services import INACTIVE_PROJECT, project_set_active, token_generate, token_revoke

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:projects_project_changelist")
ADD = reverse("admin:projects_project_add")


def detail_url(project: Project) -> str:
    return reverse("admin:projects_project_change", args=[project.pk])


def url(name: str, project: Project) -> str:
    return reverse(f"admin:projects_project_{name}", args=[project.pk])


def page(response) -> str:
    assert response.status_code == 200, response.status_code
    text = response.content.decode()
    assert VALID_KEY not in text and OTHER_KEY not in text, "an upstream key leaked into the page"
    return text


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- list ------------------------------------------------------------------------------------------------------------


def test_list_shows_columns_token_counts_and_row_actions(admin_client, make_project, make_token):
    busy, idle = make_project("Busy"), make_project("Idle", active=False)
    for _ in range(3):
        make_token(busy)
    text = page(admin_client.get(CHANGELIST))
    for header in ("Name", "Status", "Tokens", "Spend", "Created", "Actions"):
        assert f">{header}<" in text or f">{header}</a>" in text
    assert f'href="{detail_url(busy)}"' in text and 'title="Busy">Busy</span></a>' in text
    cl = admin_client.get(CHANGELIST).context["cl"]
    counts = {p.name: p.token_count for p in cl.result_list}
    assert counts == {"Busy": 3, "Idle": 0}
    assert 'class="badge badge-success">Active<' in text and 'class="badge badge-muted">Inactive<' in text
    assert f'href="{url("edit", busy)}"' in text
    assert f'href="{url("deactivate", busy)}"' in text and f'href="{url("activate", idle)}"' in text
    assert f'href="{ADD}"' in text and "New project" in text


def test_list_does_not_query_per_row(admin_client, make_project, make_token, django_assert_max_num_queries):
    for i in range(12):
        make_token(make_project(f"P{i:02}"))
    with django_assert_max_num_queries(12):
        page(admin_client.get(CHANGELIST))


def test_list_search_filter_sort_and_paginate(admin_client, make_project, make_token):
    make_project("Production API")
    make_project("Development team", active=False)
    many = make_project("Many tokens")
    make_token(many)
    make_token(many)

    def names(query: str) -> list[str]:
        return [p.name for p in admin_client.get(CHANGELIST + query).context["cl"].result_list]

    assert names("?q=prod") == ["Production API"]
    assert names("?status=active") == ["Many tokens", "Production API"]
    assert names("?status=inactive") == ["Development team"]
    text = page(admin_client.get(CHANGELIST))
    assert "By status" in text and ">Active</a>" in text and ">Inactive</a>" in text
    # Column 3 is Tokens: descending puts the project with most tokens first.
    assert names("?o=-3")[0] == "Many tokens"
    assert names("?o=1") == sorted(names("?o=1"), key=str.lower)

    for i in range(30):
        make_project(f"Bulk {i:02}")
    response = admin_client.get(CHANGELIST)
    assert len(response.context["cl"].result_list) == 25 and response.context["cl"].multi_page
    assert len(admin_client.get(CHANGELIST + "?p=2").context["cl"].result_list) == 8


# --- create ----------------------------------------------------------------------------------------------------------


def test_new_project_form_has_a_hidden_key_input_with_a_toggle(admin_client):
    text = page(admin_client.get(ADD))
    assert 'name="name"' in text
    assert 'type="password" name="api_key"' in text
    assert 'class="button api-key-toggle" data-target="id_api_key"' in text
    assert "Create project" in text and "<script src=" not in text.split('id="project-form"')[1]


def test_create_project_saves_it_active_and_goes_to_its_page(admin_client, admin_user):
    response = admin_client.post(ADD, {"name": "Production API", "api_key": VALID_KEY})
    project = Project.objects.get()
    assert response.status_code == 302 and response.url == detail_url(project)
    assert project.name == "Production API" and project.is_active and project.api_key == VALID_KEY
    entry = LogEntry.objects.get_for_object(project).get()
    assert entry.action == LogEntry.Action.CREATE and entry.actor == admin_user and entry.remote_addr == "127.0.0.1"
    text = page(admin_client.get(response.url))
    assert "was created" in text


@pytest.mark.parametrize(
    "bad_key", ["", "sk-short", "sk-proj-abc…wxyz", "sk-proj-abcd...wxyzabcdefghijklmnop", "****", "pk-" + "a" * 40]
)
def test_create_with_an_invalid_or_masked_key_shows_the_error_and_saves_nothing(admin_client, bad_key):
    response = admin_client.post(ADD, {"name": "Production API", "api_key": bad_key})
    text = page(response)
    assert "Invalid API key format" in text or (bad_key == "" and "This field is required." in text)
    assert response.context["form"].errors.get("api_key")
    assert not Project.objects.exists() and not LogEntry.objects.exists()
    if bad_key:
        assert bad_key not in text, "the submitted key must not be echoed back"


def test_create_with_a_duplicate_name_shows_the_error(admin_client, make_project):
    make_project("Production API")
    response = admin_client.post(ADD, {"name": "production api", "api_key": OTHER_KEY})
    text = page(response)
    assert response.context["form"].errors["name"] == ["A project with this name already exists."]
    assert "already exists" in text and Project.objects.count() == 1


# --- detail ----------------------------------------------------------------------------------------------------------


def test_project_page_shows_details_masked_key_tokens_and_actions(admin_client, make_project, make_token, operator):
    project = make_project("Production API")
    first = make_token(project, label="ci").token
    second = make_token(project, label="alice").token
    token_revoke(token=second, actor=operator)
    text = page(admin_client.get(detail_url(project)))
    assert str(project.pk) in text and "Production API" in text and ">Active<" in text
    assert project.api_key_masked in text and project.api_key_masked.endswith("ABCD")
    for label in ("ID", "Name", "Status", "Created", "Updated", "API key set"):
        assert f">{label}</th>" in text
    assert ">Deactivated</th>" not in text
    assert '<td class="tokens-total">2</td>' in text and '<td class="tokens-active">1</td>' in text
    for token in (first, second):
        assert f'href="{reverse("admin:tokens_token_change", args=[token.pk])}"' in text and token.prefix in text
    assert f'href="{reverse("admin:tokens_token_changelist")}?project__id__exact={project.pk}"' in text
    assert f'href="{reverse("admin:tokens_token_add")}?project={project.pk}"' in text
    for name in ("edit", "deactivate", "revoke_tokens", "history"):
        assert f'href="{url(name, project)}"' in text
    assert url("activate", project) not in text
    assert "delete" not in text.lower().split('id="content"')[1]


def test_project_page_of_an_inactive_project_disables_token_generation(admin_client, make_project):
    project = make_project(active=False)
    text = page(admin_client.get(detail_url(project)))
    assert ">Inactive<" in text and ">Deactivated</th>" in text
    assert f'href="{reverse("admin:tokens_token_add")}?project={project.pk}"' not in text
    assert 'aria-disabled="true"' in text and "no new tokens can be" in text
    assert f'href="{url("activate", project)}"' in text and url("deactivate", project) not in text


def test_project_page_of_an_unknown_project_is_404(admin_client):
    response = admin_client.get(reverse("admin:projects_project_change", args=["0" * 32]))
    assert response.status_code == 404


def test_pages_require_login(client, make_project):
    project = make_project()
    for target in (CHANGELIST, ADD, detail_url(project), url("edit", project), url("deactivate", project)):
        response = client.get(target)
        assert response.status_code == 302 and "/login/" in response.url


# --- edit ------------------------------------------------------------------------------------------------------------


def test_edit_form_shows_the_name_and_the_masked_key_as_placeholder(admin_client, make_project):
    project = make_project("Production API")
    text = page(admin_client.get(url("edit", project)))
    assert 'value="Production API"' in text
    assert f'placeholder="{project.api_key_masked} (unchanged)"' in text
    assert 'type="password" name="api_key"' in text and "api-key-toggle" in text


def test_edit_with_a_blank_key_renames_and_keeps_the_key(admin_client, make_project):
    project = make_project("Old name")
    response = admin_client.post(url("edit", project), {"name": "New name", "api_key": ""})
    assert response.status_code == 302 and response.url == detail_url(project)
    project.refresh_from_db()
    assert project.name == "New name" and project.api_key == VALID_KEY
    rename = LogEntry.objects.get_for_object(project).order_by("-timestamp").first()
    assert rename.changes_dict["name"] == ["Old name", "New name"] and "api_key_updated_at" not in rename.changes_dict


def test_edit_with_a_new_key_rotates_it_and_audits_only_that_it_changed(admin_client, make_project, admin_user):
    project = make_project()
    response = admin_client.post(url("edit", project), {"name": project.name, "api_key": OTHER_KEY})
    assert response.status_code == 302
    assert Project.objects.get(pk=project.pk).api_key == OTHER_KEY
    rotation = LogEntry.objects.get_for_object(project).order_by("-timestamp").first()
    assert list(rotation.changes_dict) == ["api_key_updated_at"] and rotation.actor == admin_user
    assert OTHER_KEY not in str(rotation.changes) and VALID_KEY not in str(rotation.changes)
    history = page(admin_client.get(url("history", project)))
    assert "API key set" in history


def test_edit_errors_go_back_on_the_form(admin_client, make_project):
    make_project("Taken")
    project = make_project("Mine")
    response = admin_client.post(url("edit", project), {"name": "Mine", "api_key": "sk-abc…wxyz"})
    assert "Invalid API key format" in page(response)
    assert response.context["form"].errors["api_key"] == ["Invalid API key format"]
    response = admin_client.post(url("edit", project), {"name": "TAKEN", "api_key": ""})
    assert response.context["form"].errors["name"] == ["A project with this name already exists."]
    project.refresh_from_db()
    assert project.name == "Mine" and project.api_key == VALID_KEY


# --- activate / deactivate -----------------------------------------------------------------------------------------


def test_deactivate_asks_first_then_blocks_tokens_and_generation(
    admin_client, make_project, make_token, admin_user, operator
):
    project = make_project()
    issued = make_token(project)
    text = page(admin_client.get(url("deactivate", project)))
    assert "blocks every proxied request" in text and "prevents generating new tokens" in text
    assert "does <strong>not</strong> revoke" in text and 'method="post"' in text
    assert Project.objects.get(pk=project.pk).is_active, "a GET must change nothing"

    response = admin_client.post(url("deactivate", project), follow=True)
    assert response.redirect_chain == [(detail_url(project), 302)]
    assert any("was deactivated" in m for m in messages_of(response))
    project.refresh_from_db()
    assert not project.is_active and project.deactivated_at is not None
    assert not Token.objects.usable().filter(pk=issued.token.pk).exists()
    assert Token.objects.get(pk=issued.token.pk).revoked_at is None, "deactivation revokes nothing"
    with pytest.raises(ValidationError, match=INACTIVE_PROJECT):
        token_generate(project=project, duration=timedelta(hours=1), actor=operator)
    entry = LogEntry.objects.get_for_object(project).order_by("-timestamp").first()
    assert entry.changes_dict["is_active"] == [True, False]
    assert entry.actor == admin_user and entry.remote_addr == "127.0.0.1"
    assert entry.additional_data["via"] == "admin"


def test_activate_asks_first_then_makes_unrevoked_tokens_usable_again(admin_client, make_project, make_token, operator):
    project = make_project()
    kept, revoked = make_token(project).token, make_token(project).token
    token_revoke(token=revoked, actor=operator)
    project_set_active(active=False, project=project, actor=operator)
    assert not Token.objects.usable().filter(project=project).exists()
    text = page(admin_client.get(url("activate", project)))
    assert "makes its tokens usable again" in text and 'method="post"' in text
    response = admin_client.post(url("activate", project))
    assert response.status_code == 302 and response.url == detail_url(project)
    project.refresh_from_db()
    assert project.is_active and project.deactivated_at is None
    assert list(Token.objects.usable().filter(project=project)) == [kept]


def test_activating_an_active_project_changes_nothing(admin_client, make_project):
    project = make_project()
    assert "is already active" in page(admin_client.get(url("activate", project)))
    admin_client.post(url("activate", project))
    assert LogEntry.objects.get_for_object(project).count() == 1


def test_state_changes_need_the_csrf_token(admin_user, make_project):
    project = make_project()
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    for name in ("deactivate", "revoke_tokens", "edit"):
        assert client.post(url(name, project), {"name": "x"}).status_code == 403
    assert Project.objects.get(pk=project.pk).is_active


def test_bulk_deactivate_action_asks_for_confirmation(admin_client, make_project):
    a, b, inactive = make_project("A"), make_project("B"), make_project("C", active=False)
    selected = {"action": "deactivate_selected", "_selected_action": [str(a.pk), str(b.pk), str(inactive.pk)]}
    text = page(admin_client.post(CHANGELIST, selected))
    assert "Projects to deactivate" in text and "<li>A</li>" in text and "<li>C</li>" not in text
    assert Project.objects.filter(is_active=True).count() == 2

    response = admin_client.post(CHANGELIST, {**selected, "post": "yes"}, follow=True)
    assert any("Deactivated 2 projects." in m for m in messages_of(response))
    assert not Project.objects.filter(is_active=True).exists()
    assert LogEntry.objects.filter(action=LogEntry.Action.UPDATE).count() == 3  # 2 here, 1 from the fixture


# --- revoke all tokens -----------------------------------------------------------------------------------------------


def test_revoke_all_tokens_warns_counts_and_revokes(admin_client, make_project, make_token, operator):
    project, other = make_project(), make_project()
    tokens = [make_token(project).token for _ in range(3)]
    token_revoke(token=tokens[0], actor=operator)
    untouched = make_token(other).token

    text = page(admin_client.get(url("revoke_tokens", project)))
    assert "cannot be undone" in text and '<strong class="unrevoked-count">2</strong>' in text
    assert Token.objects.filter(revoked_at__isnull=True).count() == 3, "a GET must change nothing"

    response = admin_client.post(url("revoke_tokens", project), follow=True)
    assert response.redirect_chain == [(detail_url(project), 302)]
    assert any("Revoked 2 tokens of" in m for m in messages_of(response))
    assert not Token.objects.filter(project=project, revoked_at__isnull=True).exists()
    assert Token.objects.get(pk=untouched.pk).revoked_at is None
    for token in tokens[1:]:
        assert LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.UPDATE).exists()

    assert "nothing to revoke" in page(admin_client.get(url("revoke_tokens", project)))


# --- never deleted ---------------------------------------------------------------------------------------------------


def test_projects_cannot_be_deleted(admin_client, make_project):
    project = make_project()
    delete = reverse("admin:projects_project_delete", args=[project.pk])
    for method in ("get", "post", "delete"):
        assert getattr(admin_client, method)(delete).status_code == 405
    for target in (CHANGELIST, detail_url(project), url("edit", project), url("history", project)):
        assert admin_client.delete(target).status_code == 405
    response = admin_client.get(CHANGELIST)
    assert "delete_selected" not in response.content.decode()
    assert set(dict(response.context["cl"].model_admin.get_action_choices(response.wsgi_request))) == {
        "",
        "deactivate_selected",
        "activate_selected",
    }
    bulk = {"action": "delete_selected", "_selected_action": [str(project.pk)], "post": "yes"}
    admin_client.post(CHANGELIST, bulk)
    assert Project.objects.filter(pk=project.pk).exists()


# --- history ---------------------------------------------------------------------------------------------------------


def test_history_shows_the_audit_entries(admin_client, make_project):
    project = make_project("Before")
    admin_client.post(url("edit", project), {"name": "After", "api_key": ""})
    admin_client.post(url("deactivate", project))
    text = page(admin_client.get(url("history", project)))
    assert text.count('class="audit-entry"') == 3  # created, renamed, deactivated
    assert "<strong>Name</strong>: Before → After" in text and "<strong>Active</strong>: True → False" in text
    assert ".None<" not in text and "Token.None" not in text, "reverse relations are not changes"
    assert ">operator<" in text and "10.1.2.3" in text and "127.0.0.1" in text and ">admin<" in text


def test_project_page_lists_its_budget_alerts(admin_client, make_project):
    from decimal import Decimal

    from proxy.models import BudgetAlert

    project, other = make_project("Watched"), make_project("Other")
    for owner, threshold in ((project, 80), (project, 100), (other, 80)):
        BudgetAlert.objects.create(
            project=owner,
            period="month",
            period_key=1,
            threshold=threshold,
            budget_usd=Decimal("50"),
            spent_usd=Decimal("40") if threshold == 80 else Decimal("50.20"),
        )
    text = page(admin_client.get(detail_url(project)))
    alerts = text.split('class="budget-alert-list"', 1)[1].split("</ul>", 1)[0]
    assert alerts.count('class="budget-alert"') == 2
    assert "100 %</span>" in alerts and "$50.20 of $50.00" in alerts and "$40.00 of $50.00" in alerts
    assert "budget-alert-list" not in page(admin_client.get(detail_url(make_project("Quiet"))))
