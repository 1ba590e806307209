"""The model price table: list, search, add, edit and delete (behind Django's confirmation), each change made by
proxy.services with the operator as the audited actor; the history page tells every change."""

from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from llmproxy.audit import Actor
from llmproxy.audit.history import AuditHistoryMixin

from ..models import ModelPrice
from ..prices import MODEL_RULE
from ..services import PRICE_FIELDS, PriceEntry, price_delete, price_entry_check, price_set


def usd(value: Decimal | None) -> str:
    """A price as people read them: at least two decimals, no trailing zeros beyond (2.50, 0.075, 10.00)."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value == round(value, 2) else format(value.normalize(), "f")


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

    def clean(self) -> dict:
        """The service's rules, so a refusal shows beside its field; the values become those it will store."""
        data = super().clean()
        if self.errors:
            return data
        entry = price_entry_check(
            PriceEntry(
                model=data.get("model", self.instance.model),
                input_per_million=data["input_per_million"],
                cached_input_per_million=data["cached_input_per_million"],
                output_per_million=data["output_per_million"],
                source=data["source"],
            )
        )
        for name in (*PRICE_FIELDS, "source", *(["model"] if "model" in data else [])):
            data[name] = getattr(entry, name)
        return data


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditHistoryMixin, admin.ModelAdmin):
    form = ModelPriceForm
    list_display = ["model", "input", "cached_input", "output", "source", "updated_at"]
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

    def get_readonly_fields(self, request: HttpRequest, obj: ModelPrice | None = None) -> list[str]:
        return ["model"] if obj is not None else []  # another model is another entry: add it, delete this one

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        context = {"price_cache_seconds": f"{settings.PRICE_CACHE_SECONDS:g}", **(extra_context or {})}
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
