"""The model prices in the management API, as a script or a program uses them."""

import json

import pytest
from auditlog.models import LogEntry

from proxy.models import ModelPrice
from tokens.minting import minting_key_create

pytestmark = pytest.mark.django_db

MANAGEMENT_TOKEN = "test-management-token-0123456789"


@pytest.fixture(autouse=True)
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


@pytest.fixture
def api(client):
    """Call the API: returns (status, parsed JSON or None)."""

    def call(method: str, path: str, body=None, *, token: str = MANAGEMENT_TOKEN, raw: str | None = None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        response = client.generic(
            method,
            path,
            data=data,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            REMOTE_ADDR="203.0.113.7",
        )
        return response.status_code, (json.loads(response.content) if response.content else None)

    return call


@pytest.fixture
def table():
    ModelPrice.objects.all().delete()
    LogEntry.objects.all().delete()
    ModelPrice.objects.create(
        model="gpt-4o*", input_per_million="2.5", cached_input_per_million="1.25", output_per_million=10, source="s1"
    )
    ModelPrice.objects.create(model="gpt-4o-mini*", input_per_million="0.15", output_per_million="0.6", source="s2")
    ModelPrice.objects.create(model="text-embedding-3-small", input_per_million="0.02", output_per_million=0)


@pytest.fixture
def minting_key(make_project, operator):
    return minting_key_create(project=make_project(name="Web"), name="web backend", actor=operator).plaintext


def test_list_gives_every_entry_by_model_with_exact_decimal_strings(api, table, minting_key):
    for token in (MANAGEMENT_TOKEN, minting_key):  # a program may want to know what its requests cost
        status, body = api("GET", "/manage/prices", token=token)
        assert status == 200
        assert [p["model"] for p in body["prices"]] == ["gpt-4o*", "gpt-4o-mini*", "text-embedding-3-small"]
    first = body["prices"][0]
    assert {k: v for k, v in first.items() if k != "updated_at"} == {
        "model": "gpt-4o*",
        "input_per_million": "2.5",
        "cached_input_per_million": "1.25",
        "output_per_million": "10",
        "source": "s1",
    }
    assert body["prices"][1]["cached_input_per_million"] is None
    assert body["prices"][2]["output_per_million"] == "0"
    assert body["pagination"] == {
        "page": 1,
        "page_size": 20,
        "total_count": 3,
        "total_pages": 1,
        "has_next": False,
        "has_prev": False,
    }
    status, body = api("GET", "/manage/prices?page_size=2&page=2")
    assert [p["model"] for p in body["prices"]] == ["text-embedding-3-small"]


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini*"),  # the longest pattern
        ("gpt-4o-2024-08-06", "gpt-4o*"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        ("text-embedding-3-small-v2", None),  # a name is no pattern
        ("o3", None),
    ],
)
def test_list_for_a_model_gives_the_entry_that_prices_it(api, table, model, entry):
    status, body = api("GET", f"/manage/prices?model={model}")
    assert status == 200
    assert [p["model"] for p in body["prices"]] == ([entry] if entry else [])


def test_read_one_entry_by_its_url_encoded_pattern(api, table, minting_key):
    status, body = api("GET", "/manage/prices/gpt-4o%2A", token=minting_key)
    assert status == 200 and body["model"] == "gpt-4o*"
    assert api("GET", "/manage/prices/gpt-4o*")[1]["model"] == "gpt-4o*"
    assert api("GET", "/manage/prices/gpt-4o") == (404, {"error": "price not found", "code": "not_found"})


def test_put_creates_then_updates_and_each_change_is_audited(api, table):
    body = {"input_per_million": 1.25, "cached_input_per_million": "0.125", "output_per_million": "10.00"}
    status, created = api("PUT", "/manage/prices/gpt-5%2A", {**body, "source": "openai.com/api/pricing, 2026-11-05"})
    assert status == 201
    assert created["model"] == "gpt-5*" and created["input_per_million"] == "1.25"
    assert created["cached_input_per_million"] == "0.125" and created["output_per_million"] == "10"
    assert created["source"] == "openai.com/api/pricing, 2026-11-05"

    status, updated = api("PUT", "/manage/prices/gpt-5%2A", {"input_per_million": "1.5", "output_per_million": 12})
    assert status == 200
    assert (updated["input_per_million"], updated["cached_input_per_million"], updated["source"]) == ("1.5", None, "")
    assert api("PUT", "/manage/prices/gpt-5%2A", {"input_per_million": "1.50", "output_per_million": 12})[0] == 200

    entries = LogEntry.objects.get_for_object(ModelPrice.objects.get(model="gpt-5*")).order_by("pk")
    assert [e.action for e in entries] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert all(e.actor_email == "management token" and e.remote_addr == "203.0.113.7" for e in entries)
    status, body = api("GET", "/manage/audit?object_type=model_price&action=update")
    assert [(e["object_repr"], e["via"]) for e in body["events"]] == [("gpt-5*", "api")]


def test_prices_are_kept_to_six_decimal_places(api, table):
    status, body = api("PUT", "/manage/prices/o3", {"input_per_million": "2.0000004", "output_per_million": 8.0000005})
    assert status == 201
    assert (body["input_per_million"], body["output_per_million"]) == ("2", "8.000001")


@pytest.mark.parametrize(
    ("path", "body", "field", "code"),
    [
        ("/manage/prices/gpt-%2A4o", {"input_per_million": 1, "output_per_million": 1}, "model", "invalid_format"),
        ("/manage/prices/gpt%204o", {"input_per_million": 1, "output_per_million": 1}, "model", "invalid_format"),
        ("/manage/prices/o3", {"input_per_million": -1, "output_per_million": 1}, "input_per_million", "out_of_range"),
        (
            "/manage/prices/o3",
            {"input_per_million": 1, "output_per_million": 10001},
            "output_per_million",
            "out_of_range",
        ),
        (
            "/manage/prices/o3",
            {"input_per_million": "1e3", "output_per_million": 1},
            "input_per_million",
            "invalid_format",
        ),
        (
            "/manage/prices/o3",
            {"input_per_million": "-1", "output_per_million": 1},
            "input_per_million",
            "invalid_format",
        ),
        (
            "/manage/prices/o3",
            {"input_per_million": True, "output_per_million": 1},
            "input_per_million",
            "invalid_type",
        ),
        ("/manage/prices/o3", {"output_per_million": 1}, "input_per_million", "required"),
        (
            "/manage/prices/o3",
            {"input_per_million": 1, "output_per_million": None},
            "output_per_million",
            "invalid_type",
        ),
        ("/manage/prices/o3", {"input_per_million": 1, "output_per_million": 1, "batch": 1}, "batch", "unknown_field"),
        (
            "/manage/prices/o3",
            {"input_per_million": 1, "output_per_million": 1, "source": "x" * 201},
            "source",
            "too_long",
        ),
    ],
)
def test_a_bad_put_is_refused_naming_the_field_and_changes_nothing(api, table, path, body, field, code):
    status, answer = api("PUT", path, body)
    assert (status, answer["field"], answer["code"]) == (400, field, code)
    assert ModelPrice.objects.count() == 3


def test_delete_removes_the_entry_audited_then_answers_404(api, table):
    assert api("DELETE", "/manage/prices/gpt-4o%2A") == (204, None)
    assert not ModelPrice.objects.filter(model="gpt-4o*").exists()
    assert LogEntry.objects.get(action=LogEntry.Action.DELETE).actor_email == "management token"
    assert api("DELETE", "/manage/prices/gpt-4o%2A")[0] == 404
    assert api("DELETE", "/manage/prices/not%20a%20model")[0] == 404


def test_minting_keys_may_read_prices_but_not_change_them(api, table, minting_key):
    assert (
        api("PUT", "/manage/prices/o3", {"input_per_million": 1, "output_per_million": 1}, token=minting_key)[0] == 403
    )
    assert api("DELETE", "/manage/prices/gpt-4o%2A", token=minting_key)[0] == 403
    assert ModelPrice.objects.count() == 3


def test_other_methods_are_405(api, table):
    status, body = api("POST", "/manage/prices", {})
    assert (status, body["code"]) == (405, "method_not_allowed")
    assert api("PATCH", "/manage/prices/gpt-4o%2A", {})[0] == 405
