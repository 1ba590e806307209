"""Price files, as `manage.py load_prices` reads them: ours, and LiteLLM's `model_prices_and_context_window.json`.

Both are one JSON object keyed by model name (ours may also be keyed by a pattern ending in `*`), and one file may
mix them. Ours, in US dollars per million tokens, as JSON numbers or decimal strings:

    {"gpt-4o*": {"input_per_million": 2.5, "cached_input_per_million": 1.25, "output_per_million": 10,
                 "source": "openai.com/api/pricing, 2026-11-05"}}

(`cached_input_per_million` and `source` may be left out.) LiteLLM's gives prices per token
(`input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`), converted here to per million.
Only OpenAI's entries are kept (`litellm_provider` `openai` or `text-completion-openai`, the proxy's upstream),
under their OpenAI name (an `openai/` prefix is dropped); entries of other providers (`azure/…`, `bedrock/…`) and
entries without per-token prices (its `sample_spec`, models priced per image or per second) are skipped and counted.
The standard prices are taken; batch, flex and priority prices are not.
"""

from dataclasses import dataclass, field
from pathlib import Path

from llmproxy.errors import ServiceError

from .prices import SOURCE_MAX_LENGTH, per_million
from .services import PriceEntry, Skipped

OUR_FIELDS = {"input_per_million", "cached_input_per_million", "output_per_million", "source"}
LITELLM_PRICES = ("input_cost_per_token", "output_cost_per_token")
LITELLM_OPENAI = {"openai", "text-completion-openai"}
OPENAI_PREFIX = "openai/"


@dataclass
class PriceFile:
    entries: list[PriceEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ours(model: str, entry: dict, source: str, found: PriceFile) -> None:
    unknown = sorted(set(entry) - OUR_FIELDS)
    if unknown:
        found.skipped.append(Skipped(model, "unknown field", ", ".join(unknown)))
        return
    if "output_per_million" not in entry:
        found.skipped.append(Skipped(model, "no prices", "output_per_million is missing"))
        return
    found.entries.append(
        PriceEntry(
            model=model,
            input_per_million=entry["input_per_million"],
            cached_input_per_million=entry.get("cached_input_per_million"),
            output_per_million=entry["output_per_million"],
            source=entry.get("source", source),
        )
    )


def _litellm(model: str, entry: dict, source: str, found: PriceFile) -> None:
    if not all(_number(entry.get(name)) for name in LITELLM_PRICES):
        found.skipped.append(Skipped(model, "no prices", "no input_cost_per_token and output_cost_per_token"))
        return
    provider = entry.get("litellm_provider")
    if provider not in LITELLM_OPENAI:
        found.skipped.append(Skipped(model, "another provider", f"litellm_provider {provider!r}"))
        return
    cached = entry.get("cache_read_input_token_cost")
    try:
        cached_per_million = per_million(cached, "cache_read_input_token_cost") if _number(cached) else None
        found.entries.append(
            PriceEntry(
                model=model.removeprefix(OPENAI_PREFIX),
                input_per_million=per_million(entry["input_cost_per_token"], "input_cost_per_token"),
                cached_input_per_million=cached_per_million,
                output_per_million=per_million(entry["output_cost_per_token"], "output_cost_per_token"),
                source=source,
            )
        )
    except ServiceError as error:
        found.skipped.append(Skipped(model, "invalid", f"{error.field}: {error.text}"))


def read_price_file(data: object, *, path: Path) -> PriceFile:
    """The entries of a parsed price file, and those skipped with why. ValueError: not a price file at all."""
    if not isinstance(data, dict):
        raise ValueError("a price file is a JSON object of model names to prices")
    found = PriceFile()
    for model, entry in data.items():
        if not isinstance(entry, dict):
            found.skipped.append(Skipped(model, "no prices", "not a JSON object"))
        elif "input_per_million" in entry:
            _ours(model, entry, f"price file {path.name}"[:SOURCE_MAX_LENGTH], found)
        elif any(name in entry for name in (*LITELLM_PRICES, "litellm_provider", "mode")):
            _litellm(model, entry, f"LiteLLM file {path.name}"[:SOURCE_MAX_LENGTH], found)
        else:
            found.skipped.append(Skipped(model, "no prices", "neither input_per_million nor input_cost_per_token"))
    return found
