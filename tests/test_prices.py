"""The model price table: which entry prices a model, what a request costs, the rules an entry obeys, the audit of
every change, and how soon each process sees a change."""

import asyncio
import threading
import time
from decimal import Decimal

import pytest
from auditlog.models import LogEntry

from llmproxy.audit import Actor
from llmproxy.errors import ServiceError
from proxy import db, prices
from proxy.models import ModelPrice
from proxy.prices import Price, PriceTable, price_table, price_table_sync, read_price_table
from proxy.services import PriceEntry, price_delete, price_set, prices_load

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_table")]

API = Actor(via="api", label="management token", remote_addr="203.0.113.9")


@pytest.fixture
def empty_table():
    """Without the default list (nor the audit entries of its removal): each test's entries are its own."""
    ModelPrice.objects.all().delete()
    LogEntry.objects.all().delete()


def put(model: str, input_: object = "1", cached: object = None, output: object = "2", source: str = "test"):
    return price_set(
        model=model,
        input_per_million=input_,
        cached_input_per_million=cached,
        output_per_million=output,
        source=source,
        actor=API,
    )


def price(model: str, input_="1", cached=None, output="2") -> Price:
    return Price(model, Decimal(input_), None if cached is None else Decimal(cached), Decimal(output))


# --- lookup ---------------------------------------------------------------------------------------------------


def test_an_exact_name_wins_over_any_pattern_and_the_longest_pattern_over_shorter_ones():
    table = PriceTable([price("*"), price("gpt-4o*"), price("gpt-4o-mini*"), price("gpt-4o-2024-08-06"), price("o3")])
    assert table.lookup("gpt-4o-2024-08-06").model == "gpt-4o-2024-08-06"
    assert table.lookup("gpt-4o-2024-11-20").model == "gpt-4o*"
    assert table.lookup("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini*"
    assert table.lookup("gpt-4o").model == "gpt-4o*"  # a pattern's prefix matches the bare name too
    assert table.lookup("o3").model == "o3"
    assert table.lookup("o3-mini").model == "*"  # a name is no pattern: `o3` does not price `o3-mini`
    assert table.lookup("").model == "*"


def test_a_model_no_entry_matches_has_no_price():
    table = PriceTable([price("gpt-4o*"), price("o3")])
    assert table.lookup("gpt-4.1") is None
    assert table.lookup("GPT-4o") is None  # names compare exactly, as OpenAI's IDs do
    assert PriceTable([]).lookup("gpt-4o") is None


# --- cost -----------------------------------------------------------------------------------------------------


def test_cost_prices_cached_input_at_its_own_rate_and_the_rest_at_the_input_rate():
    gpt_4o = price("gpt-4o", input_="2.5", cached="1.25", output="10")
    # 1,000 input tokens of which 400 cached, 500 output: 600 × 2.5 + 400 × 1.25 + 500 × 10 per million.
    assert gpt_4o.cost(input_tokens=1000, cached_input_tokens=400, output_tokens=500) == Decimal("0.0070")
    assert gpt_4o.cost(input_tokens=0, cached_input_tokens=0, output_tokens=0) == 0


def test_without_a_cached_price_cached_input_costs_as_input():
    embedding = price("text-embedding-3-small", input_="0.02", output="0")
    assert embedding.cost(input_tokens=1_000_000, cached_input_tokens=250_000, output_tokens=0) == Decimal("0.02")


def test_cost_is_exact_for_tiny_prices_and_huge_counts():
    nano = price("gpt-5-nano", input_="0.05", cached="0.005", output="0.4")
    assert nano.cost(input_tokens=1, cached_input_tokens=1, output_tokens=0) == Decimal("0.000000005")
    big = nano.cost(input_tokens=3_000_000_001, cached_input_tokens=1, output_tokens=7)
    assert big == Decimal("150.000002805")  # (3,000,000,000 × 0.05 + 1 × 0.005 + 7 × 0.4) / 1,000,000
    assert isinstance(big, Decimal)


def test_a_cached_count_above_the_input_count_is_taken_as_all_of_it():
    gpt_4o = price("gpt-4o", input_="2.5", cached="1.25", output="10")
    assert gpt_4o.cost(input_tokens=100, cached_input_tokens=500, output_tokens=0) == Decimal("0.000125")


# --- rules ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["gpt-4o", "gpt-4o*", "*", "ft:gpt-4o-mini-2024-07-18:acme::AbC12", "o1-pro", "gpt-4.1"]
)
def test_names_and_patterns_are_accepted(model):
    assert put(model).price.model == model


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("", "required"),
        ("   ", "required"),
        ("gpt-*4o", "invalid_model"),  # a * anywhere but at the end
        ("*gpt-4o", "invalid_model"),
        ("gpt-4o**", "invalid_model"),
        ("gpt 4o", "invalid_model"),
        ("openai/gpt-4o", "invalid_model"),
        ("-gpt", "invalid_model"),
        ("..", "invalid_model"),
        ("g" * 201, "too_long"),
    ],
)
def test_a_bad_name_or_pattern_is_refused_naming_the_field(model, code):
    with pytest.raises(ServiceError) as refused:
        put(model)
    assert (refused.value.code, refused.value.field) == (code, "model")
    assert not ModelPrice.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("input_per_million", "-0.01", "out_of_range"),
        ("output_per_million", "10000.000001", "out_of_range"),
        ("cached_input_per_million", -1, "out_of_range"),
        ("input_per_million", "two", "invalid_price"),
        ("output_per_million", "NaN", "invalid_price"),
        ("output_per_million", float("inf"), "invalid_price"),
        ("input_per_million", True, "invalid_price"),
        ("input_per_million", None, "invalid_price"),
    ],
)
def test_a_bad_price_is_refused_naming_the_field(field, value, code):
    values = {"input_per_million": "1", "cached_input_per_million": None, "output_per_million": "2", field: value}
    with pytest.raises(ServiceError) as refused:
        price_set(model="gpt-4o", **values, source="", actor=API)
    assert (refused.value.code, refused.value.field) == (code, field)


def test_prices_come_as_numbers_or_decimal_strings_and_are_kept_to_six_decimal_places():
    stored = put("gpt-4o", input_=2.5, cached="1.2500004", output=10).price
    stored.refresh_from_db()
    assert stored.input_per_million == Decimal("2.5")
    assert stored.cached_input_per_million == Decimal("1.25")  # rounded, half up, to 0.000001
    assert stored.output_per_million == Decimal("10")
    assert put("o3", input_=0.1, output="10000").price.input_per_million == Decimal("0.1")  # not 0.1000000000000000055


# --- changes and their audit ----------------------------------------------------------------------------------


def test_set_creates_then_updates_and_each_change_is_audited_with_its_actor():
    created = put("gpt-4o*", input_="2.5", cached="1.25", output="10", source="openai.com/api/pricing")
    assert (created.created, created.changed) == (True, True)
    updated = put("gpt-4o*", input_="3", cached=None, output="12", source="operator")
    assert (updated.created, updated.changed) == (False, True)
    again = put("gpt-4o*", input_="3.000000", cached=None, output=12, source="operator")
    assert (again.created, again.changed) == (False, False)

    entries = LogEntry.objects.get_for_object(updated.price).order_by("pk")
    assert [e.action for e in entries] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert all(e.actor_email == "management token" and e.remote_addr == "203.0.113.9" for e in entries)
    assert entries[1].changes_dict["input_per_million"] == ["2.500000", "3.000000"]
    assert entries[1].changes_dict["cached_input_per_million"] == ["1.250000", None]
    assert entries[1].additional_data == {"via": "api"}


def test_delete_removes_exactly_the_named_entry_and_is_audited():
    put("gpt-4o*")
    put("gpt-4o")
    assert price_delete(model="gpt-4o*", actor=API) is True
    assert list(ModelPrice.objects.values_list("model", flat=True)) == ["gpt-4o"]
    assert price_delete(model="gpt-4o*", actor=API) is False
    deleted = LogEntry.objects.get(action=LogEntry.Action.DELETE)
    assert deleted.object_repr == "gpt-4o*" and deleted.actor_email == "management token"


def test_load_adds_updates_and_keeps_the_rest_unless_replacing():
    put("gpt-4o", input_="2.5", output="10", source="operator")
    put("o3", input_="2", output="8")
    put("legacy", input_="30", output="60")
    entries = [
        PriceEntry("gpt-4o", "2.5", None, "10", "LiteLLM file"),  # same prices: left alone, source too
        PriceEntry("o3", "1", "0.5", "4", "LiteLLM file"),
        PriceEntry("gpt-5*", "1.25", "0.125", "10", "LiteLLM file"),
        PriceEntry("bad*name", "1", None, "1"),
        PriceEntry("gpt-5*", "9", None, "9"),
    ]
    report = prices_load(entries=entries, replace=False, actor=API)
    assert (report.added, report.updated, report.unchanged, report.removed) == (["gpt-5*"], ["o3"], ["gpt-4o"], [])
    assert [(s.model, s.reason) for s in report.skipped] == [("bad*name", "invalid"), ("gpt-5*", "duplicate")]
    assert report.skipped[0].detail.startswith("model: The model must be a model name")
    assert ModelPrice.objects.get(model="gpt-4o").source == "operator"
    assert ModelPrice.objects.get(model="gpt-5*").input_per_million == Decimal("1.25")
    assert ModelPrice.objects.filter(model="legacy").exists()

    report = prices_load(entries=entries[:2], replace=True, actor=Actor.cli("cron"))
    assert sorted(report.removed) == ["gpt-5*", "legacy"] and report.unchanged == ["gpt-4o", "o3"]
    assert sorted(ModelPrice.objects.values_list("model", flat=True)) == ["gpt-4o", "o3"]
    removed = LogEntry.objects.filter(action=LogEntry.Action.DELETE, additional_data__via="cli")
    assert sorted(e.object_repr for e in removed) == ["gpt-5*", "legacy"]


def test_replacing_with_nothing_to_load_is_refused_and_removes_nothing():
    put("gpt-4o")
    with pytest.raises(ServiceError) as refused:
        prices_load(entries=[PriceEntry("bad model", "1", None, "1")], replace=True, actor=API)
    assert refused.value.code == "nothing_to_load"
    assert ModelPrice.objects.filter(model="gpt-4o").exists()


# --- this process's copy --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_copy(monkeypatch):
    """Each test starts without a copy of the table in this process."""
    monkeypatch.setattr(prices, "_table", None)
    monkeypatch.setattr(prices, "_read_at", float("-inf"))
    monkeypatch.setattr(prices, "_valid_after", float("-inf"))
    monkeypatch.setattr(prices, "_reading", None)


@pytest.mark.django_db(transaction=True)
def test_a_change_made_elsewhere_is_used_once_the_copy_is_older_than_the_setting(settings, fresh_copy):
    settings.PRICE_CACHE_SECONDS = 0.5
    put("gpt-4o", input_="2.5", output="10")
    assert asyncio.run(price_table()).lookup("gpt-4o").input_per_million == Decimal("2.5")
    ModelPrice.objects.filter(model="gpt-4o").update(input_per_million=Decimal(3))  # as another instance would
    assert asyncio.run(price_table()).lookup("gpt-4o").input_per_million == Decimal("2.5")  # the copy, no query
    time.sleep(0.6)
    assert asyncio.run(price_table()).lookup("gpt-4o").input_per_million == Decimal(3)
    assert price_table_sync().lookup("gpt-4o").input_per_million == Decimal(3)


@pytest.mark.django_db(transaction=True)
def test_a_change_made_in_this_process_is_used_at_once(settings, fresh_copy):
    settings.PRICE_CACHE_SECONDS = 3600
    assert price_table_sync().lookup("gpt-4o") is None
    put("gpt-4o", input_="2.5", output="10")
    assert price_table_sync().lookup("gpt-4o").output_per_million == Decimal(10)
    price_delete(model="gpt-4o", actor=API)
    assert asyncio.run(price_table()).lookup("gpt-4o") is None


@pytest.mark.django_db(transaction=True)
def test_lookups_within_the_time_read_nothing_and_a_burst_of_stale_ones_reads_once(settings, fresh_copy, monkeypatch):
    settings.PRICE_CACHE_SECONDS = 3600
    put("gpt-4o*")
    reads = []
    gate = threading.Event()

    def slow_read():
        reads.append(1)
        gate.wait(5)
        return read_price_table()

    monkeypatch.setattr(prices, "read_price_table", slow_read)

    async def burst():
        lookups = [asyncio.ensure_future(price_table()) for _ in range(50)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*lookups)

    tables = asyncio.run(burst())
    assert len(reads) == 1 and all(table is tables[0] for table in tables)
    asyncio.run(price_table())
    price_table_sync()
    assert len(reads) == 1


@pytest.mark.django_db(transaction=True)
def test_from_a_database_thread_the_table_is_read_on_that_thread(settings, fresh_copy):
    """The usage writer's statements run on the proxy's database threads (one, on SQLite): a lookup there must not
    wait for a read queued behind itself."""
    settings.PRICE_CACHE_SECONDS = 3600
    put("o3", input_="2", output="8")
    found = db.submit(lambda: price_table_sync().lookup("o3")).result(timeout=10)
    assert found.model == "o3"


@pytest.mark.django_db(transaction=True)
def test_while_the_database_cannot_be_read_the_last_table_stays_in_use(settings, fresh_copy, monkeypatch):
    from django.db import OperationalError

    settings.PRICE_CACHE_SECONDS = 0
    put("gpt-4o")
    assert price_table_sync().lookup("gpt-4o") is not None

    def unreachable():
        raise OperationalError("connection refused")

    monkeypatch.setattr(prices, "read_price_table", unreachable)
    assert price_table_sync().lookup("gpt-4o") is not None
    assert asyncio.run(price_table()).lookup("gpt-4o") is not None
    monkeypatch.setattr(prices, "_table", None)
    with pytest.raises(OperationalError):
        price_table_sync()


def test_reading_the_table_is_one_query(django_assert_num_queries):
    for n in range(30):
        put(f"model-{n}*")
    with django_assert_num_queries(1):
        table = read_price_table()
    assert len(table) == 30 and table.lookup("model-7-latest").model == "model-7*"
