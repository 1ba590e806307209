"""The OpenAPI document against the live app: schemathesis sends generated requests (valid and invalid) to every
operation, in-process through Django's WSGI handler, and checks there is no 5xx and every response (status, headers,
body) matches the document."""

from datetime import UTC, datetime

import pytest
import schemathesis
from auditlog.models import LogEntry
from django.core.wsgi import get_wsgi_application
from django.test import override_settings
from hypothesis import HealthCheck, settings

from proxy.models import ModelPrice

MANAGEMENT_TOKEN = "openapi-test-management-token"
VALID_VALUES = {
    "api_key": "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "upstream_url": "",  # the global upstream: a real URL would have to resolve, and tests run offline
    "allowed_models": ["gpt-4o*"],
    "model_aliases": {"fast": "gpt-4o-mini"},
    "allowed_endpoints": ["POST /chat/completions"],
    "allowed_origins": ["https://app.example.com"],
    "allowed_ips": ["10.0.0.0/8"],
}

schema = schemathesis.openapi.from_wsgi("/manage/openapi.json", get_wsgi_application())


@pytest.fixture
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


@pytest.fixture
def existing(make_project, make_token) -> dict:
    """Real objects: valid generated requests are pointed at them, so success answers are checked too."""
    project = make_project(name="Seeded")
    token = make_token(project, max_requests=5).token
    make_token(project, hours=1)
    price = ModelPrice.objects.create(model="gpt-4o*", input_per_million=2.5, output_per_million=10)
    return {
        "project_id": str(project.pk),
        "token_id": str(token.pk),
        "event_id": LogEntry.objects.latest("pk").pk,
        "model": price.model,
    }


def _point_at_existing(case, existing: dict) -> None:
    """Random UUIDs only ever find nothing (404); valid requests are sent to existing objects instead."""
    if case.query:
        # A parameter generated as null (or as an empty list) is left out of the URL: an invalid case would arrive
        # valid. Send it empty.
        case.query = {name: "" if value is None or value == [] else value for name, value in case.query.items()}
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    for name, value in existing.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
    if isinstance(case.body, dict) and "project_id" in case.body:
        case.body["project_id"] = existing["project_id"]
    if isinstance(case.body, dict):
        # What a schema cannot say: an upstream URL must resolve (to an allowed address), an OpenAI key has its own
        # shape when the upstream is OpenAI, a CIDR or an origin must parse, an endpoint lie within the proxy's list.
        for name, valid in VALID_VALUES.items():
            if case.body.get(name):
                case.body[name] = valid
    if case.query and "from" in case.query and case.operation.path == "/manage/usage":
        # A period is bounded across two parameters (from not after to, at most a year), which a schema cannot say.
        case.query["from"] = case.query.get("to") or datetime.now(UTC).date().isoformat()


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_openapi_document(case, management_token, existing):
    _point_at_existing(case, existing)
    case.call_and_validate(headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"})


# With MANAGE_API_LIST_FORMAT=array the two lists answer the original tool's bare arrays, and the document served in
# that mode says so: checked the same way.
with override_settings(MANAGE_API_LIST_FORMAT="array"):
    array_schema = schemathesis.openapi.from_wsgi("/manage/openapi.json", get_wsgi_application())


@pytest.mark.django_db(transaction=True)
@array_schema.include(method="GET", path_regex="^/manage/(projects|tokens)$").parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_bare_array_lists_match_the_document_of_that_mode(case, management_token, existing):
    _point_at_existing(case, existing)
    with override_settings(MANAGE_API_LIST_FORMAT="array"):
        case.call_and_validate(headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"})
