"""`manage.py load_prices`, as an operator runs it: LiteLLM's price file or ours, what it prints, what it changes."""

import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from proxy.models import ModelPrice
from tests.live import database_url

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent

# The shape of LiteLLM's model_prices_and_context_window.json, cut down to a few entries of each kind.
LITELLM = {
    "sample_spec": {
        "code_interpreter_cost_per_session": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "max_input_tokens": "max input tokens, if the provider specifies it. if not default to max_tokens",
        "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it.",
        "mode": "one of: chat, embedding, completion, image_generation, audio_transcription, audio_speech",
        "supports_function_calling": True,
    },
    "gpt-4o": {
        "cache_read_input_token_cost": 1.25e-06,
        "input_cost_per_token": 2.5e-06,
        "input_cost_per_token_batches": 1.25e-06,
        "litellm_provider": "openai",
        "max_input_tokens": 128000,
        "mode": "chat",
        "output_cost_per_token": 1e-05,
        "output_cost_per_token_batches": 5e-06,
    },
    "gpt-4o-mini": {
        "cache_read_input_token_cost": 7.5e-08,
        "input_cost_per_token": 1.5e-07,
        "litellm_provider": "openai",
        "mode": "chat",
        "output_cost_per_token": 6e-07,
    },
    "openai/gpt-4.1-nano": {
        "cache_read_input_token_cost": 2.5e-08,
        "input_cost_per_token": 1e-07,
        "litellm_provider": "openai",
        "mode": "chat",
        "output_cost_per_token": 4e-07,
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "litellm_provider": "openai",
        "mode": "embedding",
        "output_cost_per_token": 0.0,
    },
    "gpt-3.5-turbo-instruct": {
        "input_cost_per_token": 1.5e-06,
        "litellm_provider": "text-completion-openai",
        "mode": "completion",
        "output_cost_per_token": 2e-06,
    },
    "azure/gpt-4o": {
        "input_cost_per_token": 2.75e-06,
        "litellm_provider": "azure",
        "mode": "chat",
        "output_cost_per_token": 1.1e-05,
    },
    "whisper-1": {"input_cost_per_second": 0.0001, "litellm_provider": "openai", "mode": "audio_transcription"},
    "1024-x-1024/dall-e-2": {"input_cost_per_pixel": 1.9e-08, "litellm_provider": "openai", "mode": "image_generation"},
}


@pytest.fixture
def empty_table():
    """Without the default list (and the audit entries of its removal), so counts are the file's alone."""
    ModelPrice.objects.all().delete()
    LogEntry.objects.all().delete()


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("load_prices", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def write(tmp_path: Path, data, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def prices() -> dict[str, tuple]:
    return {
        p.model: (p.input_per_million, p.cached_input_per_million, p.output_per_million, p.source)
        for p in ModelPrice.objects.order_by("model")
    }


def test_litellm_file_loads_openai_prices_per_million_and_counts_what_it_skips(tmp_path, empty_table):
    path = write(tmp_path, LITELLM, "model_prices_and_context_window.json")
    out, err = run(str(path))
    assert out.strip().splitlines()[-1] == (
        "added 5, updated 0, unchanged 0, removed 0, skipped 4 (3 no prices, 1 another provider)"
    )
    source = "LiteLLM file model_prices_and_context_window.json"
    assert prices() == {
        "gpt-3.5-turbo-instruct": (Decimal("1.5"), None, Decimal("2"), source),
        "gpt-4.1-nano": (Decimal("0.1"), Decimal("0.025"), Decimal("0.4"), source),  # `openai/` dropped
        "gpt-4o": (Decimal("2.5"), Decimal("1.25"), Decimal("10"), source),
        "gpt-4o-mini": (Decimal("0.15"), Decimal("0.075"), Decimal("0.6"), source),
        "text-embedding-3-small": (Decimal("0.02"), None, Decimal("0"), source),
    }
    assert err == ""
    # Every change is audited as the command line.
    added = LogEntry.objects.filter(action=LogEntry.Action.CREATE, additional_data__via="cli")
    assert added.count() == 5 and added.first().actor_email.startswith("command line (")

    out, _ = run(str(path))
    assert out.strip() == "added 0, updated 0, unchanged 5, removed 0, skipped 4 (3 no prices, 1 another provider)"
    assert LogEntry.objects.count() == 5


def test_verbose_lists_each_entry_and_why_one_was_skipped(tmp_path, empty_table):
    out, _ = run(str(write(tmp_path, LITELLM)), "-v", "2")
    lines = out.splitlines()
    assert "added gpt-4o" in lines
    assert "skipped azure/gpt-4o: another provider (litellm_provider 'azure')" in lines
    assert "skipped whisper-1: no prices (no input_cost_per_token and output_cost_per_token)" in lines


def test_our_format_adds_patterns_updates_and_only_replace_removes_the_rest(tmp_path, empty_table):
    ModelPrice.objects.create(model="gpt-4o", input_per_million=5, output_per_million=15, source="operator")
    ModelPrice.objects.create(model="legacy-model", input_per_million=30, output_per_million=60)
    ours = {
        "gpt-4o": {"input_per_million": "2.50", "cached_input_per_million": 1.25, "output_per_million": 10},
        "gpt-5*": {
            "input_per_million": 1.25,
            "cached_input_per_million": "0.125",
            "output_per_million": "10",
            "source": "openai.com/api/pricing, 2026-11-05",
        },
        "bad*pattern": {"input_per_million": 1, "output_per_million": 1},
        "typo": {"input_per_million": 1, "output_per_milion": 1},
    }
    path = write(tmp_path, ours, "our-prices.json")
    out, _ = run(str(path))
    assert out.strip() == "added 1, updated 1, unchanged 0, removed 0, skipped 2 (1 unknown field, 1 invalid)"
    assert prices()["gpt-4o"] == (Decimal("2.5"), Decimal("1.25"), Decimal("10"), "price file our-prices.json")
    assert prices()["gpt-5*"][3] == "openai.com/api/pricing, 2026-11-05"
    assert "legacy-model" in prices()

    out, _ = run(str(path), "--replace")
    assert out.strip() == "added 0, updated 0, unchanged 2, removed 1, skipped 2 (1 unknown field, 1 invalid)"
    assert list(prices()) == ["gpt-4o", "gpt-5*"]
    assert LogEntry.objects.get(action=LogEntry.Action.DELETE).object_repr == "legacy-model"


def test_replace_with_a_file_that_gives_no_prices_removes_nothing(tmp_path):
    ModelPrice.objects.create(model="kept", input_per_million=1, output_per_million=2)
    before = prices()
    with pytest.raises(CommandError, match="There are no prices to load"):
        run(str(write(tmp_path, {"sample_spec": LITELLM["sample_spec"]})), "--replace")
    assert prices() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "a price file is a JSON object of model names to prices"),
    ],
)
def test_an_unreadable_file_fails_with_a_one_line_reason(tmp_path, content, message):
    path = tmp_path / "prices.json" if content is None else write(tmp_path, content)
    with pytest.raises(CommandError, match=message):
        run(str(path))


@pytest.mark.django_db(transaction=True)
def test_from_the_shell_exit_status_and_output(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DEBUG": "0",
    }

    def manage(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "manage.py", "load_prices", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    result = manage(str(write(tmp_path, {"o3*": {"input_per_million": 2, "output_per_million": 8}})))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("added 1, updated 0") and ModelPrice.objects.filter(model="o3*").exists()

    result = manage(str(tmp_path / "missing.json"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "cannot read" in result.stderr

    result = manage("--help")
    assert result.returncode == 0 and "--replace" in result.stdout
