"""The admin's project forms: plain input, validated and saved by projects.services (the rules live there)."""

from django import forms

from .limits import BUDGET_MAX, BUDGET_MIN, BUDGET_PLACES, PER_MINUTE_MAX, BudgetPeriod


class ApiKeyInput(forms.PasswordInput):
    """A password input the template pairs with a show/hide toggle; never re-renders its value."""

    def __init__(self, attrs: dict | None = None) -> None:
        super().__init__(
            attrs={"autocomplete": "off", "spellcheck": "false", "class": "vTextField api-key-input", **(attrs or {})},
            render_value=False,
        )


def per_minute_field(help_text: str) -> forms.IntegerField:
    return forms.IntegerField(
        required=False,
        min_value=1,
        max_value=PER_MINUTE_MAX,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"placeholder": "no limit", "step": 1}),
    )


def budget_field(help_text: str) -> forms.DecimalField:
    return forms.DecimalField(
        label="Budget (USD)",
        required=False,
        min_value=BUDGET_MIN,
        max_value=BUDGET_MAX,
        decimal_places=BUDGET_PLACES,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"placeholder": "no budget", "step": "0.01"}),
    )


class ProjectLimitsForm(forms.Form):
    """A project's limits, for all its tokens together. Blank: no limit."""

    requests_per_minute = per_minute_field("Requests of all the project's tokens together in a clock minute.")
    tokens_per_minute = per_minute_field(
        "Prompt + completion tokens the upstream reported for the project, in a clock minute."
    )
    budget_usd = budget_field(
        "Spend in US dollars per budget period. Once reached, every request of the project's tokens is refused "
        "until the period ends or the budget is raised."
    )
    budget_period = forms.ChoiceField(
        choices=BudgetPeriod.choices,
        initial=BudgetPeriod.MONTH,
        required=False,
        help_text="Calendar periods in UTC (weeks start on Monday); the spend starts from 0 in each.",
    )

    LIMITS = ("requests_per_minute", "tokens_per_minute", "budget_usd", "budget_period")

    def limits(self) -> dict:
        """The limits given (a period left out keeps the project's, or the default month)."""
        limits = {name: self.cleaned_data[name] for name in self.LIMITS}
        if not limits["budget_period"]:
            del limits["budget_period"]
        return limits


class ProjectCreateForm(ProjectLimitsForm):
    field_order = ["name", "api_key"]

    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"class": "vTextField", "autofocus": True}))
    api_key = forms.CharField(label="OpenAI API key", strip=True, widget=ApiKeyInput(attrs={"placeholder": "sk-…"}))


class ProjectEditForm(ProjectLimitsForm):
    field_order = ["name", "api_key"]

    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"class": "vTextField"}))
    api_key = forms.CharField(
        label="OpenAI API key",
        required=False,
        strip=True,
        help_text="Leave blank to keep the current key. A new key is used by the very next proxied request.",
        widget=ApiKeyInput(),
    )

    def __init__(self, *args, masked_key: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["api_key"].widget.attrs["placeholder"] = f"{masked_key} (unchanged)"
