"""Every operator screen at 1366×900, the most common laptop screen, in a real headless Chromium: no page scrolls
sideways, the columns an operator scans are in view, and a screenshot of each page (light and dark) is saved to
`screenshots/` for a person to look at after the run."""

import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone

from tests.test_browser import browser_page, operator_login  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
WIDTH, HEIGHT = 1366, 900

# (screenshot name, admin path, the columns that must be in view: Django's `column-<name>` header classes)
LISTS = [
    ("projects", "projects/project/", ["project_name", "status", "token_count", "spend", "created", "row_actions"]),
    (
        "tokens",
        "tokens/token/",
        ["short_id", "project_link", "status", "requests", "spend", "expires", "last_used", "row_actions"],
    ),
    (
        "requests",
        "proxy/usagerecord/",
        ["when", "coloured_status", "model_cell", "tokens_in_out", "duration", "cost", "project_link", "token_link"],
    ),
    (
        "security-events",
        "llmproxy/securityevent/",
        ["last_seen_cell", "kind", "reason", "count", "client_ip", "token_link"],
    ),
    ("audit-log", "auditlog/logentry/", ["created_cell", "action", "resource_link", "msg_short", "actor_display"]),
    ("minting-keys", "tokens/mintingkey/", ["key_name", "status", "project_link", "key_prefix", "last_used"]),
    ("model-prices", "proxy/modelprice/", ["model", "input", "cached_input", "output", "source_cell", "updated"]),
]

NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"


@pytest.fixture
def seeded(live_db, operator_login, operator):  # noqa: F811
    """What an operator of a small deployment sees: a dozen projects, tokens, two weeks of requests with their
    cost, a budget nearly spent and its alert, a minting key, prices, and one name longer than any column."""
    from projects.models import Project
    from projects.services import project_create, project_set_limits
    from proxy.models import BudgetAlert, UsageDaily, UsageRecord
    from proxy.services import price_set
    from tokens.minting import minting_key_create
    from tokens.services import token_generate

    call_command("seed_scale_data", projects=12, tokens=80, usage=1500, days=14, stdout=io.StringIO())
    # The seed's requests name models without prices: give them a cost, as priced requests would have.
    UsageRecord.objects.filter(prompt_tokens__isnull=False).update(cost_usd=F("prompt_tokens") * Decimal("0.00002"))
    UsageDaily.objects.update(cost_usd=F("prompt_tokens") * Decimal("0.00002"))
    busiest = Project.objects.order_by("name").first()
    project_set_limits(project=busiest, actor=operator, budget_usd=Decimal("1.00"), budget_period="month")
    now = timezone.now()
    BudgetAlert.objects.create(
        project=busiest,
        period="month",
        period_key=now.year * 12 + now.month,
        period_start=now.date().replace(day=1),
        threshold=80,
        budget_usd=Decimal("1.00"),
        spent_usd=Decimal("0.85"),
        created_at=now - timedelta(hours=2),
    )
    long_name = "Customer support assistant for the northern European region, production deployment"
    long_project = project_create(name=long_name, api_key="sk-proj-" + "x" * 40, actor=operator)
    minting_key_create(project=long_project, name="web backend of the customer support assistant", actor=operator)
    minting_key_create(project=busiest, name="CI pipeline", actor=operator)
    token_generate(
        project=long_project,
        duration=timedelta(hours=3),
        label="Nightly evaluation run of the retrieval pipeline against the full regression suite",
        actor=operator,
    )
    for model, prices in {
        "gpt-4o-mini*": ("0.15", "0.075", "0.60"),
        "gpt-4o*": ("2.50", "1.25", "10.00"),
        "text-embedding-3-small": ("0.02", None, "0"),
    }.items():
        price_set(
            model=model,
            input_per_million=Decimal(prices[0]),
            cached_input_per_million=prices[1] and Decimal(prices[1]),
            output_per_million=Decimal(prices[2]),
            source="openai.com/api/pricing, read 2026-12-01 by the operations team for the quarterly review",
            actor=operator,
        )
    return busiest


def _log_in(page, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#content-main")


def _assert_fits(page, name: str) -> None:
    assert page.evaluate(NO_SIDEWAYS_SCROLL), f"{name}: the page scrolls sideways at {WIDTH} px"


def _assert_columns_in_view(page, name: str, columns: list[str]) -> None:
    scroll, client = page.locator("#changelist .results").evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert scroll <= client, f"{name}: the table scrolls sideways ({scroll} px in {client} px)"
    assert page.locator("#result_list tbody tr").count() > 0, f"{name}: no rows"
    for column in columns:
        header = page.locator(f"#result_list thead th.column-{column}")
        assert header.count() == 1, f"{name}: no column {column}"
        box = header.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, f"{name}: {column} out of view"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_screen_fits_a_laptop(seeded, operator_login, proxy_server, browser_page, scheme):  # noqa: F811
    page = browser_page
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    page.emulate_media(color_scheme=scheme)
    SCREENSHOTS.mkdir(exist_ok=True)
    _log_in(page, proxy_server.url, *operator_login)

    # The dashboard: counts in a row, the chart across the page, spend and the budget alert, busiest side by side.
    page.screenshot(path=str(SCREENSHOTS / f"dashboard-{scheme}.png"), full_page=True)
    _assert_fits(page, "dashboard")
    cards = page.locator(".dashboard-stat")
    tops = {round(cards.nth(i).bounding_box()["y"]) for i in range(cards.count())}
    assert len(tops) == 1, "the count cards are not in one row"
    chart = page.locator("#usage .usage-chart svg").bounding_box()
    assert chart["width"] > WIDTH * 0.6, "the chart does not use the page"
    projects, tokens = (page.locator(f"#busiest-{kind}").bounding_box() for kind in ("projects", "tokens"))
    assert abs(projects["y"] - tokens["y"]) < 2 and projects["x"] < tokens["x"], "busiest lists not side by side"
    assert page.locator("#stat-spend-today").is_visible() and page.locator("#stat-spend-month").is_visible()
    assert seeded.name in page.locator("#budget-alerts").inner_text()

    for name, path, columns in LISTS:
        page.goto(f"{proxy_server.url}/admin/{path}")
        page.wait_for_selector("#result_list")
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{scheme}.png"), full_page=True)
        _assert_fits(page, name)
        _assert_columns_in_view(page, name, columns)

    # The details that left the lists are on the detail pages, which fit too.
    for name, path in [("request", "proxy/usagerecord/"), ("token", "tokens/token/")]:
        page.goto(f"{proxy_server.url}/admin/{path}")
        page.click("#result_list tbody tr:first-child a[href*='/change/']")
        page.wait_for_selector("#content-main")
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{scheme}.png"), full_page=True)
        _assert_fits(page, name)
    page.goto(f"{proxy_server.url}/admin/projects/project/{seeded.pk}/change/")  # its budget, alert and usage
    page.wait_for_selector(".project-detail")
    page.screenshot(path=str(SCREENSHOTS / f"project-{scheme}.png"), full_page=True)
    _assert_fits(page, "project")
    assert page.locator(".budget-alert-list").is_visible()
