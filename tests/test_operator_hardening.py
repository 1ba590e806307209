"""What operators and programs get from the admin and the management API when something odd is put in or asked."""

import csv
import io
import json
import re
import unicodedata
import uuid

import pytest
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.test import Client
from django.urls import URLPattern, reverse
from django.utils import timezone

from importer.models import Import
from llmproxy.audit import audited
from llmproxy.manage_api import urls as manage_urls
from projects.models import Project
from proxy.models import ModelPrice
from proxy.services import price_set
from proxy.writer import Record, UsageWriter
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
    with audited(operator):  # as import_llm_proxy records a run
        imported = Import.objects.create(source="SQLite file /srv/llm-proxy.db", projects=1)
    created = {
        Project: project,
        Token: make_token(project, label="ci").token,
        MintingKey: minting_key_create(project=project, name="web backend", actor=operator).key,
        ModelPrice: price_set(
            model="audited-model",
            input_per_million=1,
            cached_input_per_million=None,
            output_per_million=2,
            source="test",
            actor=operator,
        ).price,
        Import: imported,
    }
    assert set(auditlog.get_models()) == set(created), "a newly audited model: add it here"

    for model, obj in created.items():
        reverse = {field.name for field in model._meta.get_fields() if field.auto_created and not field.concrete}
        (entry,) = LogEntry.objects.get_for_object(obj).filter(action=LogEntry.Action.CREATE)
        assert entry.changes and not set(entry.changes) & reverse, f"{model.__name__}: {sorted(entry.changes)}"


# --- CSV exports: no cell a spreadsheet would run, whatever separator it reads them with ----------------------------
# What is typed (a token's label, a request's model), and what the export holds.
EXPORTED = {
    " =1+1": "' =1+1",
    "\u3000=1+1": "'\u3000=1+1",  # an ideographic space: a space once folded (NFKC)
    "＝1+1": "'＝1+1",  # a fullwidth =
    "x;=1+1": "x;'=1+1",  # read with ; as the separator, =1+1 is a cell of its own
    "x\t=1+1": "x\t'=1+1",
    "\t=1+1": "'\t'=1+1",
    "@SUM(A1)": "'@SUM(A1)",
    "-2+3": "'-2+3",
    "a;b": "a;b",
}


def assert_no_formula(body: str) -> None:
    for separator in (",", ";", "\t"):
        cells = [cell for row in csv.reader(io.StringIO(body), delimiter=separator) for cell in row]
        formulas = [
            c for c in cells if unicodedata.normalize("NFKC", c).lstrip(" ")[:1] in ("=", "+", "-", "@", "\t", "\r")
        ]
        assert not formulas, f"read with {separator!r} as the separator"
    assert '"x;\'=1+1"' in body and '"a;b"' in body, "a cell holding another separator is quoted"


def test_the_token_export_holds_no_formula(admin_client, make_project, make_token):
    labels = [typed for typed in EXPORTED if typed == typed.strip()]  # a label is stripped when a token is made
    project = make_project(name="Exported")
    tokens = [make_token(project, label=label).token for label in labels]

    response = admin_client.post(
        reverse("admin:tokens_token_changelist"),
        {"action": "export_csv", "_selected_action": [str(token.pk) for token in tokens]},
    )

    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert_no_formula(body)
    assert sorted(row["label"] for row in csv.DictReader(io.StringIO(body))) == sorted(EXPORTED[x] for x in labels)


def test_the_request_log_export_holds_no_formula(admin_client):
    UsageWriter().write(
        [
            Record(
                time=timezone.now(),
                method="POST",
                path="/v1/chat/completions",
                status=404,
                duration_ms=1.0,
                request_id=f"formula-{index}",
                client_ip="10.0.0.9",
                model=model,
            )
            for index, model in enumerate(EXPORTED)
        ]
    )

    response = admin_client.get(reverse("admin:proxy_usagerecord_export"))

    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert_no_formula(body)
    assert sorted(row["model"] for row in csv.DictReader(io.StringIO(body))) == sorted(EXPORTED.values())
