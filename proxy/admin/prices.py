"""The model price table: list, search, add, edit and delete (behind Django's confirmation), each change made by
proxy.services with the operator as the audited actor; the history page tells every change."""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.safestring import SafeString

from llmproxy.admin_toolkit import compact_time, truncated
from llmproxy.audit import Actor
from llmproxy.audit.history import AuditHistoryMixin
from llmproxy.errors import ServiceError

from ..models import ModelPrice
from ..prices import MODEL_RULE, clean_model, clean_price, clean_source
from ..services import price_delete, price_set


def usd(value: Decimal | None) -> str:
    """A price as people read them: at least two decimals, no trailing zeros beyond (2.50, 0.075, 10.00)."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value == round(value, 2) else format(value.normalize(), "f")


def _by_rule(rule: Callable, *args: object) -> Any:
    try:
        return rule(*args)
    except ServiceError as error:
        raise forms.ValidationError(error.text, code=error.code) from None


class ModelPriceForm(forms.ModelForm):
    # Any number of decimals: the service rounds to the 6 it stores, as it does for the API and price files.
    input_per_million = forms.DecimalField(label="Input ($ / 1M tokens)")
    cached_input_per_million = forms.DecimalField(
        label="Cached input ($ / 1M tokens)",
        required=False,
        help_text="Leave empty to price cached input tokens as other input tokens.",
    )
    output_per_million = forms.DecimalField(label="Output ($ / 1M tokens)")

    class Meta:
        model = ModelPrice
        fields = ["model", "input_per_million", "cached_input_per_million", "output_per_million", "source"]
        help_texts = {
            "model": f"{MODEL_RULE[0].upper()}{MODEL_RULE[1:]}. A model is priced by the entry of its exact name, "
            "else by the longest pattern it starts with.",
            "source": "Where the figures come from and when you read them, e.g. “openai.com/api/pricing, 2026-11-05”.",
        }

    # Each field by the service's own rule, so every refusal shows beside its field at once (the service checks
    # them again when it saves).
    def clean_model(self) -> str:
        return _by_rule(clean_model, self.cleaned_data["model"])

    def clean_input_per_million(self) -> Decimal:
        return _by_rule(clean_price, self.cleaned_data["input_per_million"], "input_per_million")

    def clean_cached_input_per_million(self) -> Decimal | None:
        value = self.cleaned_data["cached_input_per_million"]
        return None if value is None else _by_rule(clean_price, value, "cached_input_per_million")

    def clean_output_per_million(self) -> Decimal:
        return _by_rule(clean_price, self.cleaned_data["output_per_million"], "output_per_million")

    def clean_source(self) -> str:
        return _by_rule(clean_source, self.cleaned_data["source"])


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditHistoryMixin, admin.ModelAdmin):
    form = ModelPriceForm
    list_display = ["model", "input", "cached_input", "output", "source_cell", "updated"]
    search_fields = ["model", "source"]
    ordering = ["model"]
    list_per_page = 100
    change_list_template = "admin/proxy/modelprice/change_list.html"

    @admin.display(description="Input ($ / 1M)", ordering="input_per_million")
    def input(self, price: ModelPrice) -> str:
        return usd(price.input_per_million)

    @admin.display(description="Cached input ($ / 1M)", ordering="cached_input_per_million")
    def cached_input(self, price: ModelPrice) -> str:
        return usd(price.cached_input_per_million)

    @admin.display(description="Output ($ / 1M)", ordering="output_per_million")
    def output(self, price: ModelPrice) -> str:
        return usd(price.output_per_million)

    @admin.display(description="Source", ordering="source")
    def source_cell(self, price: ModelPrice) -> SafeString:
        return truncated(price.source, "wide")

    @admin.display(description="Updated", ordering="updated_at")
    def updated(self, price: ModelPrice) -> SafeString:
        return compact_time(price.updated_at)

    def get_readonly_fields(self, request: HttpRequest, obj: ModelPrice | None = None) -> list[str]:
        return ["model"] if obj is not None else []  # another model is another entry: add it, delete this one

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        context = {
            "title": "Model prices",
            "price_cache_seconds": f"{settings.PRICE_CACHE_SECONDS:g}",
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: ModelPriceForm, change: bool) -> None:
        saved = price_set(
            model=obj.model,
            input_per_million=obj.input_per_million,
            cached_input_per_million=obj.cached_input_per_million,
            output_per_million=obj.output_per_million,
            source=obj.source,
            actor=Actor.from_request(request),
        )
        obj.pk = saved.price.pk

    def delete_model(self, request: HttpRequest, obj: ModelPrice) -> None:
        price_delete(model=obj.model, actor=Actor.from_request(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelPrice]) -> None:
        actor = Actor.from_request(request)
        for model in queryset.values_list("model", flat=True):
            price_delete(model=model, actor=actor)
