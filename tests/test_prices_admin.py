"""The "Model prices" screen, driven through Django's test client as an operator would use it."""

import re
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.urls import reverse

from proxy.models import ModelPrice

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:proxy_modelprice_changelist")
ADD = reverse("admin:proxy_modelprice_add")


def change_url(price: ModelPrice) -> str:
    return reverse("admin:proxy_modelprice_change", args=[price.pk])


def form(**fields) -> dict:
    return {
        "model": "gpt-4o*",
        "input_per_million": "2.50",
        "cached_input_per_million": "1.25",
        "output_per_million": "10",
        "source": "openai.com/api/pricing, 2026-11-05",
        **fields,
    }


def test_the_shipped_prices_show_where_and_when_their_figures_were_read(admin_client):
    html = admin_client.get(CHANGELIST).content.decode()
    shipped = {p.model: p for p in ModelPrice.objects.all()}
    assert {"gpt-5.1", "gpt-5-nano", "text-embedding-3-small", "text-embedding-3-large"} <= set(shipped)
    nano = shipped["gpt-5-nano"]
    assert (nano.input_per_million, nano.cached_input_per_million, nano.output_per_million) == (
        Decimal("0.05"),
        Decimal("0.005"),
        Decimal("0.4"),
    )
    assert shipped["text-embedding-3-small"].cached_input_per_million is None
    assert "developers.openai.com/api/docs/models/gpt-5-nano, read 2026-12-02" in html


def test_the_list_shows_each_price_with_its_source_and_how_a_price_is_chosen(admin_client):
    ModelPrice.objects.all().delete()
    ModelPrice.objects.create(
        model="gpt-4o*",
        input_per_million=Decimal("2.5"),
        cached_input_per_million=Decimal("1.25"),
        output_per_million=Decimal(10),
        source="openai.com/api/pricing, 2026-11-05",
    )
    ModelPrice.objects.create(
        model="text-embedding-3-small", input_per_million=Decimal("0.02"), output_per_million=0, source="operator"
    )
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    rows = [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r'class="field-\w+[^"]*"[^>]*>(.*?)</t[hd]>', row)]
        for row in re.findall(r"<tr>(.*?)</tr>", html.split('id="result_list"')[1], re.S)
        if "field-model" in row
    ]
    assert [row[:5] for row in rows] == [
        ["gpt-4o*", "2.50", "1.25", "10.00", "openai.com/api/pricing, 2026-11-05"],
        ["text-embedding-3-small", "0.02", "—", "0.00", "operator"],
    ]
    assert "longest" in html and "within 5 s" in html and "load_prices" in html


def test_search_finds_by_model_or_source(admin_client):
    ModelPrice.objects.create(model="zz-custom*", input_per_million=1, output_per_million=2, source="our contract")
    listed = admin_client.get(CHANGELIST, {"q": "zz-cus"}).context["cl"].result_list
    assert [p.model for p in listed] == ["zz-custom*"]
    listed = admin_client.get(CHANGELIST, {"q": "contract"}).context["cl"].result_list
    assert [p.model for p in listed] == ["zz-custom*"]


def test_adding_a_price_is_audited_with_the_operator(admin_client):
    ModelPrice.objects.filter(model="gpt-4o*").delete()
    response = admin_client.post(ADD, form(input_per_million="2.5000004"), REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 302, response.context["adminform"].form.errors
    price = ModelPrice.objects.get(model="gpt-4o*")
    assert (price.input_per_million, price.cached_input_per_million, price.output_per_million) == (
        Decimal("2.5"),
        Decimal("1.25"),
        Decimal(10),
    )
    entry = LogEntry.objects.get_for_object(price).get()
    assert entry.action == LogEntry.Action.CREATE
    assert entry.actor.username == "operator" and entry.remote_addr == "10.1.2.3"
    assert entry.additional_data == {"via": "admin"}


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"model": "gpt-*4o"}, "model", "a * anywhere else is not allowed"),
        ({"model": "gpt 4o"}, "model", "The model must be a model name"),
        ({"input_per_million": "-1"}, "input_per_million", "between 0 and 10000"),
        ({"output_per_million": "10000.5"}, "output_per_million", "between 0 and 10000"),
        ({"output_per_million": ""}, "output_per_million", "This field is required."),
        ({"cached_input_per_million": "x"}, "cached_input_per_million", "Enter a number."),
    ],
)
def test_a_refused_value_is_shown_beside_its_field_and_nothing_is_saved(admin_client, fields, field, message):
    count = ModelPrice.objects.count()
    response = admin_client.post(ADD, form(**{"model": "new-model", **fields}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field])
    assert ModelPrice.objects.count() == count


def test_every_refused_field_is_shown_at_once(admin_client):
    errors = (
        admin_client.post(ADD, form(model="gpt-*4o", input_per_million="-1", source="ok"))
        .context["adminform"]
        .form.errors
    )
    assert set(errors) == {"model", "input_per_million"}


def test_a_model_that_has_a_price_already_is_refused(admin_client):
    ModelPrice.objects.get_or_create(model="gpt-4o*", defaults={"input_per_million": 1, "output_per_million": 2})
    response = admin_client.post(ADD, form())
    assert "Model price with this Model already exists." in response.context["adminform"].form.errors["model"]


def test_editing_changes_the_prices_not_the_model_and_is_audited(admin_client):
    price, _ = ModelPrice.objects.update_or_create(
        model="gpt-4o*", defaults={"input_per_million": 1, "output_per_million": 2, "source": "old"}
    )
    page = admin_client.get(change_url(price)).content.decode()
    assert 'name="model"' not in page  # another model is another entry
    response = admin_client.post(
        change_url(price), form(model="renamed", cached_input_per_million="", source="operator")
    )
    assert response.status_code == 302
    price.refresh_from_db()
    assert (price.model, price.input_per_million, price.cached_input_per_million, price.source) == (
        "gpt-4o*",
        Decimal("2.5"),
        None,
        "operator",
    )
    entry = LogEntry.objects.get_for_object(price).filter(action=LogEntry.Action.UPDATE).get()
    assert entry.changes_dict["source"] == ["old", "operator"] and entry.actor.username == "operator"
    history = admin_client.get(reverse("admin:proxy_modelprice_history", args=[price.pk])).content.decode()
    assert "<strong>Source</strong>: old → operator" in history


def test_delete_asks_for_confirmation_then_deletes_audited(admin_client):
    price, _ = ModelPrice.objects.get_or_create(
        model="gpt-4o*", defaults={"input_per_million": 1, "output_per_million": 2}
    )
    delete_url = reverse("admin:proxy_modelprice_delete", args=[price.pk])
    page = admin_client.get(delete_url)
    assert page.status_code == 200 and "Are you sure" in page.content.decode()
    assert ModelPrice.objects.filter(pk=price.pk).exists()
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302
    assert not ModelPrice.objects.filter(pk=price.pk).exists()
    entry = LogEntry.objects.get(action=LogEntry.Action.DELETE, object_repr="gpt-4o*")
    assert entry.actor.username == "operator"


def test_delete_selected_removes_each_one_audited(admin_client):
    ModelPrice.objects.all().delete()
    LogEntry.objects.all().delete()
    ids = [ModelPrice.objects.create(model=f"m{n}", input_per_million=1, output_per_million=1).pk for n in range(3)]
    data = {"action": "delete_selected", "_selected_action": ids[:2]}
    assert "Are you sure" in admin_client.post(CHANGELIST, data).content.decode()
    admin_client.post(CHANGELIST, {**data, "post": "yes"})
    assert list(ModelPrice.objects.values_list("model", flat=True)) == ["m2"]
    deleted = LogEntry.objects.filter(action=LogEntry.Action.DELETE)
    assert sorted(e.object_repr for e in deleted) == ["m0", "m1"]
    assert all(e.actor.username == "operator" for e in deleted)
