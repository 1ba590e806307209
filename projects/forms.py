"""The admin's project forms: plain input, validated and saved by projects.services (the rules live there)."""

from django import forms


class ApiKeyInput(forms.PasswordInput):
    """A password input the template pairs with a show/hide toggle; never re-renders its value."""

    def __init__(self, attrs: dict | None = None) -> None:
        super().__init__(
            attrs={"autocomplete": "off", "spellcheck": "false", "class": "vTextField api-key-input", **(attrs or {})},
            render_value=False,
        )


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200, widget=forms.TextInput(attrs={"class": "vTextField", "autofocus": True}))
    api_key = forms.CharField(label="OpenAI API key", strip=True, widget=ApiKeyInput(attrs={"placeholder": "sk-…"}))


class ProjectEditForm(forms.Form):
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
