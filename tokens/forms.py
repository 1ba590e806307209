"""Operator input for tokens: parsed here, decided by `tokens.services` (which may still refuse it)."""

from django import forms
from django.conf import settings

from projects.forms import ALLOWED_IPS_HELP, ALLOWED_MODELS_HELP, budget_field, lines_field, per_minute_field
from projects.models import Project
from projects.policy import TOKEN_POLICY_FIELDS
from projects.selectors import active_projects

DURATION_PRESETS: list[tuple[int, str]] = [
    (1, "1 hour"),
    (4, "4 hours"),
    (8, "8 hours"),
    (24, "24 hours"),
    (168, "7 days"),
    (720, "30 days"),
]
DEFAULT_DURATION_HOURS = 24


def _max_requests_field() -> forms.IntegerField:
    limit = settings.TOKEN_MAX_REQUESTS
    message = f"Request limit must be a whole number from 0 to {limit} (blank or 0 = unlimited)."
    return forms.IntegerField(
        label="Max requests",
        required=False,
        min_value=0,
        max_value=limit,
        help_text="Blank or 0 = unlimited.",
        error_messages={"invalid": message, "min_value": message, "max_value": message},
        widget=forms.NumberInput(attrs={"placeholder": "unlimited", "step": 1}),
    )


class TokenGenerateForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.all())
    label = forms.CharField(
        required=False,
        max_length=200,
        help_text="Who or what holds this token, e.g. “CI pipeline” or “Alice’s laptop”.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only active projects are offered, but any project is accepted: one deactivated after this page was
        # loaded then gets the service's own error ("Cannot generate tokens for inactive project").
        self.fields["project"].choices = [("", "Choose a project…"), *((str(p.pk), p.name) for p in active_projects())]

        max_hours = settings.TOKEN_MAX_DURATION_HOURS
        message = f"Duration must be a whole number of hours from 1 to {max_hours}."
        self.fields["duration_hours"] = forms.IntegerField(
            label="Duration (hours)",
            initial=DEFAULT_DURATION_HOURS,
            min_value=1,
            max_value=max_hours,
            help_text=f"Pick a preset or type any whole number of hours up to {max_hours}.",
            error_messages={"invalid": message, "min_value": message, "max_value": message},
            widget=forms.NumberInput(attrs={"list": "duration-presets", "step": 1}),
        )
        _add_limit_fields(self)
        within = " Within the project's own list, if it has one."
        self.fields["allowed_models"] = lines_field("Allowed models", ALLOWED_MODELS_HELP + within, "gpt-4o-mini")
        self.fields["allowed_ips"] = lines_field("Allowed client addresses", ALLOWED_IPS_HELP + within, "10.1.2.0/24")

    @property
    def duration_presets(self) -> list[tuple[int, str]]:
        return [(hours, label) for hours, label in DURATION_PRESETS if hours <= settings.TOKEN_MAX_DURATION_HOURS]

    def limits(self) -> dict:
        return {name: self.cleaned_data[name] for name in LIMITS}

    def policy(self) -> dict:
        return {name: self.cleaned_data[name] or None for name in TOKEN_POLICY_FIELDS}


class TokenLimitsForm(forms.Form):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _add_limit_fields(self)

    def limits(self) -> dict:
        return {name: self.cleaned_data[name] for name in LIMITS}


LIMITS = ("max_requests", "requests_per_minute", "tokens_per_minute", "budget_usd")


def _add_limit_fields(form: forms.Form) -> None:
    """A token's own limits (its project's hold too): blank for none."""
    form.fields["max_requests"] = _max_requests_field()
    form.fields["requests_per_minute"] = per_minute_field("Requests of this token in a clock minute.")
    form.fields["tokens_per_minute"] = per_minute_field(
        "Prompt + completion tokens the upstream reported for this token, in a clock minute."
    )
    form.fields["budget_usd"] = budget_field(
        "Spend in US dollars over the token's whole life; once reached, every request is refused."
    )
