"""The minting-key admin: list with last use, create (the key is shown once), revoke with confirmation; no delete."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from llmproxy.admin_toolkit import NeverDeletedMixin, OperatorPagesMixin, add_service_error, compact_time, truncated
from llmproxy.audit import Actor
from llmproxy.errors import ServiceError
from projects.models import Project

from ..minting import minting_key_create, minting_key_revoke
from ..models import MintingKey


class MintingKeyCreateForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.order_by("name"))
    name = forms.CharField(max_length=100, help_text="Which program will hold this key, e.g. “web backend”.")


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(MintingKey)
class MintingKeyAdmin(NeverDeletedMixin, OperatorPagesMixin, admin.ModelAdmin):
    # Who created a key is on its page.
    list_display = ["key_name", "status", "project_link", "key_prefix", "last_used", "created"]
    list_filter = ["project", StatusFilter]
    list_select_related = ["project", "created_by"]
    search_fields = ["name", "prefix", "project__name"]
    fields = [
        "name",
        "project",
        "key_prefix",
        "created_at",
        "created_by_display",
        "last_used_at",
        "status",
        "revoked_at",
        "revoked_by_display",
        "revoke_link",
    ]
    readonly_fields = fields
    not_deletable_message = "Minting keys are never deleted; revoke them instead."

    @admin.display(description="name", ordering="name")
    def key_name(self, obj: MintingKey) -> SafeString:
        return truncated(obj.name, "wide")

    @admin.display(description="project", ordering="project__name")
    def project_link(self, obj: MintingKey) -> SafeString:
        url = reverse("admin:projects_project_change", args=[obj.project_id])
        return format_html('<a href="{}">{}</a>', url, truncated(obj.project.name))

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, obj: MintingKey) -> SafeString | str:
        return compact_time(obj.last_used_at, empty="Never")

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: MintingKey) -> SafeString:
        return compact_time(obj.created_at)

    @admin.display(description="key")
    def key_prefix(self, obj: MintingKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="created by")
    def created_by_display(self, obj: MintingKey) -> str:
        return obj.created_by_display

    @admin.display(description="revoked by")
    def revoked_by_display(self, obj: MintingKey) -> str:
        return obj.revoked_by_display

    @admin.display(description="status", ordering="revoked_at")
    def status(self, obj: MintingKey) -> SafeString:
        return format_html(
            '<span class="badge {}">{}</span>', "badge-muted" if obj.is_revoked else "badge-success", obj.status_label
        )

    @admin.display(description="revoke")
    def revoke_link(self, obj: MintingKey) -> str:
        if obj.is_revoked:
            return "Already revoked."
        url = reverse("admin:tokens_mintingkey_revoke", args=[obj.pk])
        return format_html('<a class="deletelink" href="{}">Revoke this key…</a>', url)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Minting keys", **(extra_context or {})})

    def has_change_permission(self, request: HttpRequest, obj: MintingKey | None = None) -> bool:
        return False  # nothing to edit: a key is created, used and revoked

    def get_urls(self):
        revoke = self.admin_site.admin_view(self.revoke_view)
        return [path("<uuid:object_id>/revoke/", revoke, name="tokens_mintingkey_revoke"), *super().get_urls()]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = MintingKeyCreateForm(request.POST)
            if form.is_valid():
                try:
                    issued = minting_key_create(
                        project=form.cleaned_data["project"],
                        name=form.cleaned_data["name"],
                        actor=Actor.from_request(request),
                    )
                except ServiceError as error:
                    add_service_error(form, error)
                else:
                    response = TemplateResponse(
                        request,
                        "admin/tokens/mintingkey/created.html",
                        self.page_context(request, "Minting key created", issued=issued),
                    )
                    response["Cache-Control"] = "no-store"
                    return response
        else:
            form = MintingKeyCreateForm(initial={"project": self._project_from_query(request)})
        return TemplateResponse(
            request, "admin/tokens/mintingkey/add.html", self.page_context(request, "Add minting key", form=form)
        )

    def revoke_view(self, request: HttpRequest, object_id) -> HttpResponse:
        if not self.has_view_permission(request) or not request.user.has_perm("tokens.add_mintingkey"):
            raise PermissionDenied
        key = self.get_object_or_404(request, str(object_id), change=False)
        if request.method == "POST":
            if minting_key_revoke(key=key, actor=Actor.from_request(request)):
                self.message_user(request, f"Minting key “{key}” revoked.", messages.SUCCESS)
            else:
                self.message_user(request, f"Minting key “{key}” was already revoked.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:tokens_mintingkey_change", args=[key.pk]))
        return TemplateResponse(
            request,
            "admin/tokens/mintingkey/revoke_confirm.html",
            self.page_context(request, "Revoke minting key", key=key),
        )

    @staticmethod
    def _project_from_query(request: HttpRequest) -> Project | None:
        project_id = request.GET.get("project", "")
        try:
            return Project.objects.filter(pk=project_id).first()
        except ValidationError:
            return None
