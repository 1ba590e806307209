"""What operators and programs get from the admin and the management API when something odd is put in or asked."""

import json
import re
import uuid

import pytest
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.test import Client
from django.urls import URLPattern

from llmproxy.manage_api import urls as manage_urls
from projects.models import Project
from tokens.minting import minting_key_create
from tokens.models import MintingKey, Token

pytestmark = pytest.mark.django_db

UNSAFE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]


# --- the management API: JSON whatever the method, never Django's CSRF page ----------------------------------------
def api_paths() -> list[str]:
    """A path for each route of the API (its parameters filled in), and for none."""

    def example(pattern: URLPattern) -> str:
        route = str(pattern.pattern)
        return "/manage/" + (
            re.sub(r"<[^>]+>", str(uuid.UUID(int=1)), route) if not route.startswith("^") else "nothing"
        )

    return [example(pattern) for pattern in manage_urls.urlpatterns]


@pytest.mark.parametrize("method", ["GET", "OPTIONS", *UNSAFE_METHODS])
@pytest.mark.parametrize("path", ["/manage/nothing", "/manage/", "/manage/projects/x/y/z"])
def test_an_unknown_management_path_is_a_json_404_whatever_the_method(method, path):
    response = Client(enforce_csrf_checks=True).generic(method, path, data="{}", content_type="application/json")

    assert response.status_code == 404, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"error": "not found", "code": "not_found"}


@pytest.mark.parametrize("method", UNSAFE_METHODS)
@pytest.mark.parametrize("path", api_paths())
def test_no_management_route_asks_for_a_csrf_token(settings, method, path):
    settings.MANAGEMENT_TOKEN = "test-management-token-0123456789"
    response = Client(enforce_csrf_checks=True).generic(
        method, path, data="{}", content_type="application/json", HTTP_AUTHORIZATION="Bearer wrong"
    )

    assert response["Content-Type"] == "application/json", f"{response.status_code}: {response.content[:200]}"
    assert response.status_code != 403


# --- the audit trail: what an operator changed, never what points at the object -------------------------------------
def test_no_audit_entry_lists_a_reverse_relation(make_project, make_token, operator):
    project = make_project(name="Audited")
    created = {
        Project: project,
        Token: make_token(project, label="ci").token,
        MintingKey: minting_key_create(project=project, name="web backend", actor=operator).key,
    }
    assert set(auditlog.get_models()) == set(created), "a newly audited model: add it here"

    for model, obj in created.items():
        reverse = {field.name for field in model._meta.get_fields() if field.auto_created and not field.concrete}
        (entry,) = LogEntry.objects.get_for_object(obj).filter(action=LogEntry.Action.CREATE)
        assert entry.changes and not set(entry.changes) & reverse, f"{model.__name__}: {sorted(entry.changes)}"
