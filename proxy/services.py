"""Every change to the model price table: validated, written and audited in one transaction (rules: proxy.prices),
and the response cache's purge.

A price change is used by this process at once and by every other worker within PRICE_CACHE_SECONDS.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import IntegrityError, transaction

from llmproxy.audit import Actor, audited, log_updates
from llmproxy.errors import ServiceError
from projects.models import Project

from . import cache_store
from .models import ModelPrice
from .prices import clean_model, clean_price, clean_source, forget_price_table

PRICE_FIELDS = ("input_per_million", "cached_input_per_million", "output_per_million")


@dataclass(frozen=True)
class PriceEntry:
    """One entry as given (by a form, a request or a price file): checked when it is set."""

    model: str
    input_per_million: object
    cached_input_per_million: object  # None: cached input is priced as input
    output_per_million: object
    source: str = ""


@dataclass(frozen=True)
class CleanEntry:
    model: str
    input_per_million: Decimal
    cached_input_per_million: Decimal | None
    output_per_million: Decimal
    source: str

    def prices(self) -> tuple[Decimal, Decimal | None, Decimal]:
        return self.input_per_million, self.cached_input_per_million, self.output_per_million


def _checked(entry: PriceEntry) -> CleanEntry:
    """The entry as it is stored (prices rounded to 6 decimal places); ServiceError naming the field that breaks a
    rule."""
    cached = entry.cached_input_per_million
    return CleanEntry(
        model=clean_model(entry.model),
        input_per_million=clean_price(entry.input_per_million, "input_per_million"),
        cached_input_per_million=None if cached is None else clean_price(cached, "cached_input_per_million"),
        output_per_million=clean_price(entry.output_per_million, "output_per_million"),
        source=clean_source(entry.source),
    )


def _prices_of(price: ModelPrice) -> tuple[Decimal, Decimal | None, Decimal]:
    return price.input_per_million, price.cached_input_per_million, price.output_per_million


def _assign(price: ModelPrice, entry: CleanEntry) -> None:
    price.input_per_million, price.cached_input_per_million, price.output_per_million = entry.prices()
    price.source = entry.source


@dataclass(frozen=True)
class PriceSetResult:
    price: ModelPrice
    created: bool
    changed: bool  # False: the entry already had exactly these prices and source (nothing written, nothing audited)


def price_set(
    *,
    model: str,
    input_per_million: object,
    cached_input_per_million: object,
    output_per_million: object,
    source: str,
    actor: Actor,
) -> PriceSetResult:
    """Create the entry for `model` (a name or a pattern), or replace its prices and source."""
    given = PriceEntry(model, input_per_million, cached_input_per_million, output_per_million, source)
    entry = _checked(given)
    try:
        return _set(entry, actor)
    except IntegrityError:
        # Another caller created the same entry between this one's read and its insert: now this one updates it.
        return _set(entry, actor)


def _set(entry: CleanEntry, actor: Actor) -> PriceSetResult:
    with transaction.atomic(), audited(actor):
        price = ModelPrice.objects.select_for_update().filter(model=entry.model).first()
        if price is not None and _prices_of(price) == entry.prices() and price.source == entry.source:
            return PriceSetResult(price=price, created=False, changed=False)
        created = price is None
        price = price or ModelPrice(model=entry.model)
        _assign(price, entry)
        price.save()
        forget_price_table()
    return PriceSetResult(price=price, created=created, changed=True)


def price_delete(*, model: str, actor: Actor) -> bool:
    """Remove the entry named exactly `model` (a pattern is removed by its pattern). False: there was none."""
    with transaction.atomic(), audited(actor):
        price = ModelPrice.objects.select_for_update().filter(model=model).first()
        if price is None:
            return False
        price.delete()
        forget_price_table()
    return True


@dataclass(frozen=True)
class Skipped:
    model: str
    reason: str  # short, for counting: "invalid", "duplicate", "no prices", "another provider", …
    detail: str = ""


@dataclass
class LoadReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def prices_load(
    *, entries: Iterable[PriceEntry], replace: bool, actor: Actor, skipped: Iterable[Skipped] = ()
) -> LoadReport:
    """Add or update many entries at once (all or nothing); with `replace`, also remove every entry not among them.

    An entry whose prices are already those given is left as it is, its source too. Entries that break a rule, and
    later entries for a model given before, are skipped and reported with the reason; `skipped` adds those the
    caller skipped already (a price file's entries without prices, say), so the report tells about them all.
    """
    report = LoadReport(skipped=list(skipped))
    clean: dict[str, CleanEntry] = {}
    for entry in entries:
        try:
            checked = _checked(entry)
        except ServiceError as error:
            report.skipped.append(Skipped(str(entry.model), "invalid", f"{error.field}: {error.text}"))
            continue
        if checked.model in clean:
            report.skipped.append(Skipped(checked.model, "duplicate", "given more than once (the first is kept)"))
            continue
        clean[checked.model] = checked
    if replace and not clean:
        raise ServiceError("nothing_to_load", "There are no prices to load: replacing the table would empty it.")
    with transaction.atomic(), audited(actor):
        existing = {price.model: price for price in ModelPrice.objects.select_for_update()}
        for model, entry in clean.items():
            price = existing.get(model)
            if price is not None and _prices_of(price) == entry.prices():
                report.unchanged.append(model)
                continue
            (report.added if price is None else report.updated).append(model)
            price = price or ModelPrice(model=model)
            _assign(price, entry)
            price.save()
        if replace:
            for model, price in existing.items():
                if model not in clean:
                    price.delete()
                    report.removed.append(model)
        forget_price_table()
    return report


# --- the response cache ------------------------------------------------------------------------------------------

CACHE_PURGE_PATH_MAX = 500


def _clean_purge_path(path: str | None) -> str | None:
    """A path as the proxy serves it (`/chat/completions`), also given with its `/v1`."""
    if not path:
        return None
    path = path.strip()
    if path.startswith("/v1/"):
        path = path[len("/v1") :]
    if not path.startswith("/") or len(path) > CACHE_PURGE_PATH_MAX:
        raise ServiceError(
            "invalid_path", "path must be an API path such as /chat/completions (with or without /v1).", field="path"
        )
    return path


def cache_purge(*, project: Project, actor: Actor, model: str | None = None, path: str | None = None) -> int:
    """Remove the project's answers from the response cache (only those of a model, or of a path, when given), and
    audit it on the project. Returns how many were removed. Requests after it go upstream until answers are kept
    again."""
    path = _clean_purge_path(path)
    model = (model or "").strip() or None
    which = ", ".join(part for part in (f"model {model}" if model else "", f"path {path}" if path else "") if part)
    with transaction.atomic():
        try:
            removed = cache_store.purge(project.pk, model=model, path=path)
        except cache_store.PURGE_ERRORS:
            raise ServiceError(
                "cache_unavailable", "The response cache cannot be reached (CACHE_URL); nothing was purged."
            ) from None
        log_updates([project], actor, {"response_cache": [which or "all answers", f"purged: {removed} removed"]})
    return removed
