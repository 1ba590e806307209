"""One walk through the admin in a real headless Chromium, against the real server (gunicorn + uvicorn)."""

import os
import re
import shutil

import pytest

from tests.conftest import VALID_KEY, require_part

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_page():
    require_part(os.path.exists(CHROMIUM), "Chromium is not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_part(False, "the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(15_000)
        yield page
        browser.close()


@pytest.fixture
def operator_login(live_db, django_user_model):
    django_user_model.objects.create_superuser(username="alice", email="alice@example.com", password="s3cret-pass!")
    return "alice", "s3cret-pass!"


def test_operator_creates_project_generates_and_revokes_a_token(
    operator_login, proxy_server, upstream, openai_client, browser_page
):
    import openai

    page = browser_page
    username, password = operator_login

    page.goto(f"{proxy_server.url}/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("text=Dashboard")

    page.click("text=New project")
    page.fill("#id_name", "Browser project")
    page.fill("#id_api_key", VALID_KEY)
    page.click("input[name=_save]")
    page.wait_for_selector(".project-detail")
    assert VALID_KEY not in page.content()

    page.click("text=Generate token")
    page.fill("#id_label", "browser test")
    page.click("#token_generate_form input[type=submit]")
    token = page.inner_text("#token-value").strip()
    assert re.fullmatch(r"sk-wt-[A-Za-z0-9]{32}", token)

    # The token read off the page works through the proxy with the official SDK.
    assert openai_client(token).models.list().data

    # Find it again by pasting the whole token into the list's search box.
    page.goto(f"{proxy_server.url}/admin/tokens/token/")
    page.fill("#searchbar", token)
    page.press("#searchbar", "Enter")
    page.click("#result_list tbody tr a[href*='/change/']")
    assert token not in page.content()
    page.click("a.revoke-link")
    page.click("input[value='Yes, revoke it']")
    page.wait_for_selector("text=Revoked")

    with pytest.raises(openai.AuthenticationError):
        openai_client(token).models.list()
