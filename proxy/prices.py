"""What a model's tokens cost: the rules of the price table, and each process's copy of it for the hot path.

An entry's `model` is a model name (`gpt-4o-2024-08-06`) or a prefix pattern ending in one `*` (`gpt-4o*`); `*`
alone matches every model. A request's model is priced by the entry of exactly that name, else by the longest
pattern it starts with, else not at all. Names compare exactly (OpenAI's model IDs are lower case).

Prices are US dollars per million tokens, stored with 6 decimal places (prices per token are tiny): the cost of a
request is exact, never a float.

Lookups happen for every request, so each process keeps the whole table in memory (a dict of names and a short list
of patterns, longest first) and reads it again from the database when it is older than PRICE_CACHE_SECONDS: a price
change reaches every worker of every instance within that time, and no request waits on the database for a price.
"""

import asyncio
import logging
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from llmproxy.errors import ServiceError

from . import db
from .models import ModelPrice

logger = logging.getLogger(__name__)

MODEL_MAX_LENGTH = 200
SOURCE_MAX_LENGTH = 200
DECIMAL_PLACES = 6
MAX_PRICE = Decimal(10_000)  # USD per million tokens: far above any model's price so far, so a typo stands out
_QUANTUM = Decimal(1).scaleb(-DECIMAL_PLACES)

# A name starts with a letter or digit and goes on with those and `. _ : @ + ~ -` (OpenAI's IDs, fine-tuned ones
# like `ft:gpt-4o-mini-2024-07-18:org::abc` included); a pattern adds one `*` at the end. No `/`: a name is one
# segment of an API path. Written so that Python and ECMA-262 (the OpenAPI document) read it the same.
MODEL_PATTERN = rf"(?:[A-Za-z0-9][A-Za-z0-9._:@+~-]{{0,{MODEL_MAX_LENGTH - 2}}}\*?|\*)"
_MODEL_RE = re.compile(MODEL_PATTERN)
MODEL_RULE = (
    "a model name (letters, digits and . _ : @ + ~ -, starting with a letter or digit) or a prefix pattern ending "
    "in one * (a * anywhere else is not allowed); * alone matches every model"
)


def clean_model(model: str) -> str:
    """The entry's name or pattern, checked; surrounding spaces are trimmed."""
    model = model.strip() if isinstance(model, str) else ""
    if not model:
        raise ServiceError("required", "A model name or pattern is required.", field="model")
    if len(model) > MODEL_MAX_LENGTH:
        raise ServiceError("too_long", f"The model must be at most {MODEL_MAX_LENGTH} characters.", field="model")
    if not _MODEL_RE.fullmatch(model):
        raise ServiceError("invalid_model", f"The model must be {MODEL_RULE}.", field="model")
    return model


def clean_price(value: object, field: str) -> Decimal:
    """A price in USD per million tokens from a Decimal, an integer, a float or a decimal string: at least 0, at
    most MAX_PRICE, rounded to 6 decimal places."""
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))  # the shortest text that reads back as it: 0.1, not 0.1000000000000000055…
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = Decimal("NaN")
    else:
        raise ServiceError("invalid_price", "A price must be a number.", field=field)
    if not number.is_finite():
        raise ServiceError("invalid_price", "A price must be a number.", field=field)
    if not 0 <= number <= MAX_PRICE:
        raise ServiceError(
            "out_of_range", f"A price must be between 0 and {MAX_PRICE} US dollars per million tokens.", field=field
        )
    return number.quantize(_QUANTUM, rounding=ROUND_HALF_UP) + 0  # + 0: no negative zero (-0.0 is a JSON number)


def clean_source(source: str) -> str:
    if not isinstance(source, str):
        raise ServiceError("invalid_source", "The source must be text.", field="source")
    source = source.strip()
    if len(source) > SOURCE_MAX_LENGTH:
        raise ServiceError("too_long", f"The source must be at most {SOURCE_MAX_LENGTH} characters.", field="source")
    return source


def per_million(per_token: object, field: str) -> Decimal:
    """A price per token (as LiteLLM's file gives them: 2.5e-06) as a price per million tokens."""
    if isinstance(per_token, bool) or not isinstance(per_token, int | float):
        raise ServiceError("invalid_price", "A price must be a number.", field=field)
    exact = Decimal(repr(per_token)) if isinstance(per_token, float) else Decimal(per_token)
    return clean_price(exact.scaleb(6), field)


@dataclass(frozen=True)
class Price:
    model: str  # the entry's name or pattern
    input_per_million: Decimal
    cached_input_per_million: Decimal | None
    output_per_million: Decimal

    def cost(self, *, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> Decimal:
        """(input − cached) × input + cached × (cached price, else input) + output × output, per million, in USD.

        `input_tokens` counts the cached ones too (as OpenAI's `prompt_tokens` does); a cached count above it is
        taken as all of it. Exact: with 6 decimal places per million, a cost has at most 12.
        """
        input_tokens, output_tokens = max(input_tokens, 0), max(output_tokens, 0)
        cached = min(max(cached_input_tokens, 0), input_tokens)
        cached_price = self.cached_input_per_million
        if cached_price is None:
            cached_price = self.input_per_million
        total = (input_tokens - cached) * self.input_per_million + cached * cached_price
        return (total + output_tokens * self.output_per_million).scaleb(-6)

    @property
    def is_pattern(self) -> bool:
        return self.model.endswith("*")


class PriceTable:
    """Every entry, arranged for lookups: names in a dict, patterns by length (the longest is tried first)."""

    def __init__(self, prices: list[Price]) -> None:
        self._names = {p.model: p for p in prices if not p.is_pattern}
        self._patterns = sorted(
            ((p.model[:-1], p) for p in prices if p.is_pattern), key=lambda item: len(item[0]), reverse=True
        )

    def lookup(self, model: str) -> Price | None:
        """The entry named `model`, else the longest pattern `model` starts with, else None."""
        found = self._names.get(model)
        if found is not None:
            return found
        for prefix, price in self._patterns:
            if model.startswith(prefix):
                return price
        return None

    def __len__(self) -> int:
        return len(self._names) + len(self._patterns)


def read_price_table() -> PriceTable:
    """The table as the database has it now (one query)."""
    rows = ModelPrice.objects.values_list(
        "model", "input_per_million", "cached_input_per_million", "output_per_million"
    )
    return PriceTable([Price(*row) for row in rows])


def model_prices() -> QuerySet[ModelPrice]:
    """Every entry, by model (for lists)."""
    return ModelPrice.objects.order_by("model")


def model_price_for(model: str) -> ModelPrice | None:
    """The entry that prices `model` now, as the database has it (not this process's copy)."""
    price = read_price_table().lookup(model)
    return None if price is None else model_prices().filter(model=price.model).first()


# --- this process's copy ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_table: PriceTable | None = None
_read_at = float("-inf")  # time.monotonic() when the read that `_table` came from began
_valid_after = float("-inf")  # a read that began before this (a change made here since) is out of date
_reading: Future | None = None  # the read under way, which every caller that finds the copy too old waits for


def _fresh() -> PriceTable | None:
    if _read_at >= _valid_after and time.monotonic() - _read_at < settings.PRICE_CACHE_SECONDS:
        return _table
    return None


def _read_and_keep() -> PriceTable:
    global _table, _read_at
    began = time.monotonic()
    table = read_price_table()
    with _lock:
        if began >= _read_at:  # a read that began earlier never replaces a later one
            _table, _read_at = table, began
    return table


def _start_read() -> Future:
    """One read at a time, on one of the proxy's database threads; callers meanwhile share its result."""
    global _reading
    with _lock:
        if _reading is None or _reading.done():
            _reading = db.submit(_read_and_keep)
        return _reading


def _or_last_known(error: Exception) -> PriceTable:
    """While the database cannot be read, the last table read stays in use (the next lookup tries again)."""
    if _table is None:
        raise error
    age = time.monotonic() - _read_at
    logger.warning("price table: cannot read it (%s); using the one read %.0f s ago", error, age)
    return _table


async def price_table() -> PriceTable:
    """This process's table, read from the database through `proxy.db.run` (never on the event loop itself) when
    it is older than PRICE_CACHE_SECONDS (a setting, default 5): a price change is used by every worker within
    that time."""
    table = _fresh()
    if table is not None:
        return table
    try:
        return await asyncio.wrap_future(_start_read())
    except db.CONNECTION_ERRORS as error:
        return _or_last_known(error)


def price_table_sync() -> PriceTable:
    """The same from a thread that may block (the usage writer). On one of the proxy's database threads it reads
    right there, on that thread's connection (waiting for the others could mean waiting for itself)."""
    table = _fresh()
    if table is not None:
        return table
    try:
        if threading.current_thread().name.startswith(db.THREAD_NAME_PREFIX):
            return _read_and_keep()
        return _start_read().result()
    except db.CONNECTION_ERRORS as error:
        return _or_last_known(error)


def forget_price_table() -> None:
    """After a change made in this process, once it is committed: its next lookup reads the table again (other
    processes see it within PRICE_CACHE_SECONDS)."""

    def forget() -> None:
        global _valid_after
        with _lock:
            _valid_after = time.monotonic()

    transaction.on_commit(forget)
