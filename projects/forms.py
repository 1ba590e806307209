"""The admin's project forms: plain input, validated and saved by projects.services (the rules live there)."""

from django import forms

from .limits import BUDGET_MAX, BUDGET_MIN, BUDGET_PLACES, PER_MINUTE_MAX, BudgetPeriod
from .models import CacheMode
from .policy import POLICY_FIELDS
from .upstreams import URL_MAX_LENGTH, UpstreamAuth


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


def lines_field(label: str, help_text: str, placeholder: str) -> forms.CharField:
    """A list, one entry per line (the services check each entry and name the one they refuse)."""
    return forms.CharField(
        label=label,
        required=False,
        strip=True,
        help_text=help_text,
        widget=forms.Textarea(
            attrs={"rows": 3, "class": "vLargeTextField policy-list", "placeholder": placeholder, "spellcheck": "false"}
        ),
    )


def as_lines(value) -> str:
    """A stored list (or alias map) as the textarea shows it."""
    if not value:
        return ""
    if isinstance(value, dict):
        return "\n".join(f"{alias} = {model}" for alias, model in value.items())
    return "\n".join(value)


ALLOWED_MODELS_HELP = "One per line: a model name, or a prefix ending in * (gpt-4o*). Blank: any model."
ALLOWED_IPS_HELP = "One per line: an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, 2001:db8::/32). Blank: any."


class ProjectPolicyForm(forms.Form):
    """The upstream and the policy lists; blank lists are no restriction."""

    upstream_url = forms.CharField(
        label="Upstream URL",
        required=False,
        max_length=URL_MAX_LENGTH,
        help_text="The API's base URL: https://api.anthropic.com/v1, https://NAME.openai.azure.com/openai/v1, "
        "http://vllm.internal:8000/v1, … Blank: the proxy's UPSTREAM_BASE_URL (OpenAI).",
        widget=forms.TextInput(attrs={"class": "vTextField", "placeholder": "the proxy's UPSTREAM_BASE_URL"}),
    )
    upstream_auth = forms.ChoiceField(
        label="Key sent as",
        required=False,
        choices=[("", "What the URL implies"), *UpstreamAuth.choices],
        help_text="Blank: api-key on Azure's hosts, x-api-key on api.anthropic.com, Authorization: Bearer elsewhere.",
    )
    allowed_models = lines_field("Allowed models", ALLOWED_MODELS_HELP, "gpt-4o-mini\ngpt-4.1*")
    model_aliases = lines_field(
        "Model aliases",
        "One per line, alias = model (fast = gpt-4o-mini): the request's model is rewritten before it is forwarded "
        "(on Azure, map to deployment names). Allowed models apply to the model it stands for.",
        "fast = gpt-4o-mini",
    )
    allowed_endpoints = lines_field(
        "Allowed endpoints",
        "One per line, METHOD /path as in PROXY_ALLOWED_ENDPOINTS (POST /embeddings; * for one path segment). "
        "Blank: all of those.",
        "POST /chat/completions\nPOST /embeddings",
    )
    allowed_origins = lines_field(
        "Allowed web origins",
        "One per line: the browser origins the tokens may be used from (https://app.example.com). Blank: as the "
        "proxy's PROXY_CORS_ALLOWED_ORIGINS says. Requests without an Origin (servers) are not affected.",
        "https://app.example.com",
    )
    allowed_ips = lines_field("Allowed client addresses", ALLOWED_IPS_HELP, "10.0.0.0/8")

    def upstream(self) -> dict:
        return {
            "upstream_url": self.cleaned_data["upstream_url"],
            "upstream_auth": self.cleaned_data["upstream_auth"],
        }

    def policy(self) -> dict:
        return {name: self.cleaned_data[name] or None for name in POLICY_FIELDS}

    @staticmethod
    def initial_for(project) -> dict:
        return {
            "upstream_url": project.upstream_url,
            "upstream_auth": project.upstream_auth,
            **{name: as_lines(getattr(project, name)) for name in POLICY_FIELDS},
        }


class ProjectCacheForm(forms.Form):
    """The response cache: off unless chosen."""

    cache_mode = forms.ChoiceField(
        label="Response cache",
        choices=CacheMode.choices,
        initial=CacheMode.OFF,
        required=False,
        help_text="Off: nothing is cached. Opt-in: a request is answered from the cache when the client sends "
        "Cache-Control: max-age=N. On: also embeddings and requests with temperature 0 or a seed, for the cache "
        "lifetime. Answers are shared by the project's tokens, never with another project.",
    )
    cache_ttl_seconds = forms.IntegerField(
        label="Cache lifetime (seconds)",
        initial=3600,
        required=False,
        min_value=1,
        help_text="How long an answer cached without the client's max-age is kept (mode On).",
    )

    CACHING = ("cache_mode", "cache_ttl_seconds")

    def caching(self) -> dict:
        """The settings given (one left blank keeps the project's, or the default)."""
        return {name: self.cleaned_data[name] for name in self.CACHING if self.cleaned_data[name] not in (None, "")}


class ProjectCreateForm(ProjectLimitsForm, ProjectPolicyForm, ProjectCacheForm):
    field_order = ["name", "upstream_url", "upstream_auth", "api_key"]

    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"class": "vTextField", "autofocus": True}))
    api_key = forms.CharField(
        label="Upstream API key",
        strip=True,
        help_text="For OpenAI itself a complete sk-… key; for another upstream, its key as issued.",
        widget=ApiKeyInput(attrs={"placeholder": "sk-…"}),
    )


class ProjectEditForm(ProjectLimitsForm, ProjectPolicyForm, ProjectCacheForm):
    field_order = ["name", "upstream_url", "upstream_auth", "api_key"]

    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"class": "vTextField"}))
    api_key = forms.CharField(
        label="Upstream API key",
        required=False,
        strip=True,
        help_text="Leave blank to keep the current key (it must then fit the upstream's key rule). A new key is "
        "used by the very next proxied request.",
        widget=ApiKeyInput(),
    )

    def __init__(self, *args, masked_key: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["api_key"].widget.attrs["placeholder"] = f"{masked_key} (unchanged)"
