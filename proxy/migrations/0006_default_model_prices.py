"""The price list shipped with LLM Proxy: only figures read on OpenAI's own model pages (developers.openai.com), each
entry's source naming its page and the date it was read. Models whose figures could not be confirmed there are left
out rather than guessed: add them in the admin, through the API, or from LiteLLM's price file (load_prices).

Entries are added only where the table has none of that name, and removed on reversal only while they still hold
the figures shipped here (an operator's change is kept either way).
"""

from decimal import Decimal

from django.db import migrations

READ = "read 2026-12-02"
PAGES = "developers.openai.com/api/docs/models"

# model: (input, cached input, output) in US dollars per million tokens, standard processing; source.
DEFAULT_PRICES = {
    "gpt-5.1": ("1.25", "0.125", "10", f"{PAGES}/gpt-5.1, {READ}"),
    "gpt-5.1-2025-11-13": ("1.25", "0.125", "10", f"{PAGES}/gpt-5.1 (snapshot), {READ}"),
    "gpt-5-nano": ("0.05", "0.005", "0.40", f"{PAGES}/gpt-5-nano, {READ}"),
    "gpt-5-nano-2025-08-07": ("0.05", "0.005", "0.40", f"{PAGES}/gpt-5-nano (snapshot), {READ}"),
    "text-embedding-3-large": ("0.13", None, "0", f"{PAGES}/text-embedding-3-large, {READ}"),
    "text-embedding-3-small": ("0.02", None, "0", f"{PAGES}/text-embedding-3-large (comparison), {READ}"),
}


def _figures(model: str) -> dict:
    input_price, cached, output, source = DEFAULT_PRICES[model]
    return {
        "input_per_million": Decimal(input_price),
        "cached_input_per_million": None if cached is None else Decimal(cached),
        "output_per_million": Decimal(output),
        "source": source,
    }


def add_defaults(apps, schema_editor):
    ModelPrice = apps.get_model("proxy", "ModelPrice")
    for model in DEFAULT_PRICES:
        ModelPrice.objects.get_or_create(model=model, defaults=_figures(model))


def remove_defaults(apps, schema_editor):
    ModelPrice = apps.get_model("proxy", "ModelPrice")
    for model in DEFAULT_PRICES:
        ModelPrice.objects.filter(model=model, **_figures(model)).delete()


class Migration(migrations.Migration):
    dependencies = [("proxy", "0005_model_price")]

    operations = [migrations.RunPython(add_defaults, remove_defaults)]
