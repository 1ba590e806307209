"""The operator's project pages: list, create, detail, edit, activate/deactivate, revoke all tokens, history.

Every write goes through projects.services / tokens.services with the operator as the audited actor. Projects are
never deleted: the delete URL, and any DELETE request, answers 405.
"""

from collections.abc import Callable

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.debug import sensitive_post_parameters

from llmproxy.admin_toolkit import DetailPageMixin, NeverDeletedMixin, add_service_error, compact_time, truncated
from llmproxy.audit import Actor
from llmproxy.audit.history import AuditHistoryMixin
from llmproxy.errors import ServiceError
from proxy.probe import project_upstream_test
from proxy.selectors import budget_alerts_recent
from proxy.services import cache_purge
from tokens.selectors import project_minting_keys, project_token_summary, project_unrevoked_token_count
from tokens.services import project_set_active, project_tokens_revoke

from .forms import ProjectCreateForm, ProjectEditForm, ProjectPolicyForm, as_lines
from .limits import usd
from .models import Project
from .policy import POLICY_FIELDS
from .selectors import project_list_with_token_counts
from .services import project_create, project_set_cache, project_set_limits, project_set_policy, project_update

# The upstream key never reaches an error report: Django's reports list POST data, masked only where told so.
sensitive_key = method_decorator(sensitive_post_parameters("api_key"))


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


class ProjectStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("inactive", "Inactive")]

    def queryset(self, request, queryset):
        if self.value() in ("active", "inactive"):
            return queryset.filter(is_active=self.value() == "active")
        return queryset


def status_badge(project: Project) -> str:
    css = "badge-success" if project.is_active else "badge-muted"
    return format_html('<span class="badge {}">{}</span>', css, project.status_label)


@admin.register(Project)
class ProjectAdmin(NeverDeletedMixin, DetailPageMixin, AuditHistoryMixin, admin.ModelAdmin):
    list_display = ["project_name", "status", "token_count", "spend", "created", "row_actions"]
    list_filter = [ProjectStatusFilter]
    search_fields = ["name"]
    ordering = ["name"]
    list_per_page = 25
    actions = ["deactivate_selected", "activate_selected"]
    not_deletable_message = "Projects cannot be deleted. Deactivate the project and revoke its tokens instead."

    detail_template = "admin/projects/project/detail.html"
    form_template = "admin/projects/project/form.html"
    set_active_template = "admin/projects/project/set_active_confirmation.html"
    set_active_selected_template = "admin/projects/project/set_active_selected_confirmation.html"
    revoke_tokens_template = "admin/projects/project/revoke_tokens_confirmation.html"
    purge_cache_template = "admin/projects/project/purge_cache_confirmation.html"

    # --- list ----------------------------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Project]:
        queryset = project_list_with_token_counts()
        ordering = self.get_ordering(request)
        return queryset.order_by(*ordering) if ordering else queryset

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Projects", **(extra_context or {})})

    @admin.display(description="Name", ordering="name")
    def project_name(self, project: Project) -> SafeString:
        return truncated(project.name, "wide")

    @admin.display(description="Status", ordering="is_active")
    def status(self, project: Project) -> str:
        return status_badge(project)

    @admin.display(description="Spend")
    def spend(self, project: Project) -> str:
        """This budget period's spend, beside the budget when there is one."""
        spent = usd(project.spent_in_period(timezone.now()))
        if project.budget_usd is None:
            return spent
        return format_html(
            '{} / {} <span class="quiet-text">{}</span>', spent, usd(project.budget_usd), project.budget_period
        )

    @admin.display(description="Created", ordering="created_at")
    def created(self, project: Project) -> SafeString:
        return compact_time(project.created_at)

    @admin.display(description="Tokens", ordering="token_count")
    def token_count(self, project: Project) -> int:
        return project.token_count

    @admin.display(description="Actions")
    def row_actions(self, project: Project) -> str:
        edit = reverse("admin:projects_project_edit", args=[project.pk])
        if project.is_active:
            toggle, label = reverse("admin:projects_project_deactivate", args=[project.pk]), "Deactivate"
        else:
            toggle, label = reverse("admin:projects_project_activate", args=[project.pk]), "Activate"
        return format_html(
            '<span class="row-actions"><a href="{}">Edit</a><a href="{}">{}</a></span>', edit, toggle, label
        )

    # --- URLs ------------------------------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = f"{self.opts.app_label}_{self.opts.model_name}"

        def view(method: Callable) -> Callable:
            return self.admin_site.admin_view(method)

        own = [
            path("<path:object_id>/edit/", view(self.edit_view), name=f"{info}_edit"),
            path("<path:object_id>/activate/", view(self.activate_view), name=f"{info}_activate"),
            path("<path:object_id>/deactivate/", view(self.deactivate_view), name=f"{info}_deactivate"),
            path("<path:object_id>/revoke-tokens/", view(self.revoke_tokens_view), name=f"{info}_revoke_tokens"),
            path("<path:object_id>/test-connection/", view(self.test_connection_view), name=f"{info}_test_connection"),
            path("<path:object_id>/purge-cache/", view(self.purge_cache_view), name=f"{info}_purge_cache"),
        ]
        return own + super().get_urls()

    def _detail_url(self, project: Project) -> str:
        return reverse("admin:projects_project_change", args=[project.pk])

    # --- create, detail, edit ------------------------------------------------------------------------------------

    @sensitive_key
    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ProjectCreateForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                project = project_create(
                    name=form.cleaned_data["name"],
                    api_key=form.cleaned_data["api_key"],
                    actor=Actor.from_request(request),
                    **form.upstream(),
                    **form.limits(),
                    **form.policy(),
                    **form.caching(),
                )
            except ServiceError as e:
                add_service_error(form, e)
            else:
                messages.success(request, f"Project “{project.name}” was created. It is active.")
                return HttpResponseRedirect(self._detail_url(project))
        context = self.page_context(
            request,
            "New project",
            form=form,
            submit_label="Create project",
            cancel_url=reverse("admin:projects_project_changelist"),
            add=True,
        )
        return TemplateResponse(request, self.form_template, context)

    def detail_context(self, request: HttpRequest, project: Project) -> tuple[str, dict]:
        """The project page: its details, its tokens and what can be done with it (editing is `edit_view`)."""
        can_change = self.has_change_permission(request, project)
        return project.name, {
            "project": project,
            "status": status_badge(project),
            "tokens": project_token_summary(project),
            "minting_keys": project_minting_keys(project),
            "budget_alerts": budget_alerts_recent(project=project, days=None),
            "can_add_minting_key": request.user.has_perm("tokens.add_mintingkey"),
            "can_change": can_change,
            "can_revoke_tokens": can_change and request.user.has_perm("tokens.change_token"),
            "can_generate_token": request.user.has_perm("tokens.add_token"),
            "policy": [
                (project._meta.get_field(name).verbose_name, as_lines(getattr(project, name)).splitlines())
                for name in POLICY_FIELDS
            ],
            "purge_cache_url": reverse("admin:projects_project_purge_cache", args=[project.pk]) if can_change else "",
            "all_tokens_query": f"?project__id__exact={project.pk}",
            "generate_token_query": f"?project={project.pk}",
        }

    @sensitive_key
    def edit_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        project = self.get_object_or_404(request, object_id, change=True)
        data = request.POST if request.method == "POST" else None
        initial = {
            "name": project.name,
            **{name: getattr(project, name) for name in (*ProjectEditForm.LIMITS, *ProjectEditForm.CACHING)},
            **ProjectPolicyForm.initial_for(project),
        }
        form = ProjectEditForm(data, initial=initial, masked_key=project.api_key_masked)
        if form.is_valid():
            actor = Actor.from_request(request)
            try:
                with transaction.atomic():
                    project = project_update(
                        project=project,
                        name=form.cleaned_data["name"],
                        api_key=form.cleaned_data["api_key"] or None,
                        actor=actor,
                        **form.upstream(),
                    )
                    project = project_set_limits(project=project, actor=actor, **form.limits())
                    project = project_set_policy(project=project, actor=actor, **form.policy())
                    project = project_set_cache(project=project, actor=actor, **form.caching())
            except ServiceError as e:
                add_service_error(form, e)
            else:
                messages.success(request, f"Project “{project.name}” was saved.")
                return HttpResponseRedirect(self._detail_url(project))
        context = self.page_context(
            request,
            f"Edit {project.name}",
            form=form,
            project=project,
            original=project,
            submit_label="Save changes",
            cancel_url=self._detail_url(project),
        )
        return TemplateResponse(request, self.form_template, context)

    def test_connection_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: ask the upstream for its model list with the project's key; the outcome (never the key) shows on
        the project page."""
        project = self.get_object_or_404(request, object_id, change=True)
        if request.method != "POST":
            return HttpResponseRedirect(self._detail_url(project))
        result = project_upstream_test(project=project)
        if result.ok:
            models = "" if result.model_count is None else f" It lists {result.model_count} models."
            messages.success(request, f"The upstream answered with the project's key.{models}")
        else:
            messages.error(request, f"The upstream test failed: {result.message}")
        return HttpResponseRedirect(self._detail_url(project))

    # --- activate / deactivate -----------------------------------------------------------------------------------

    def activate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._set_active_view(request, object_id, active=True)

    def deactivate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._set_active_view(request, object_id, active=False)

    def _set_active_view(self, request: HttpRequest, object_id: str, *, active: bool) -> HttpResponse:
        """GET asks for confirmation; POST does it."""
        project = self.get_object_or_404(request, object_id, change=True)
        verb = "activate" if active else "deactivate"
        if request.method == "POST":
            done = project_set_active(project=project, active=active, actor=Actor.from_request(request))
            if done.changed:
                messages.success(request, f"Project “{done.project.name}” was {verb}d.")
            else:
                messages.info(request, f"Project “{project.name}” is already {project.status_label.lower()}.")
            return HttpResponseRedirect(self._detail_url(project))
        context = self.page_context(
            request,
            f"{verb.capitalize()} project “{project.name}”?",
            project=project,
            original=project,
            active=active,
            verb=verb,
            already=project.is_active == active,
        )
        return TemplateResponse(request, self.set_active_template, context)

    @admin.action(description="Deactivate selected projects", permissions=["change"])
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet[Project]) -> HttpResponse | None:
        return self._set_active_selected(request, queryset, active=False)

    @admin.action(description="Activate selected projects", permissions=["change"])
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[Project]) -> HttpResponse | None:
        return self._set_active_selected(request, queryset, active=True)

    def _set_active_selected(self, request: HttpRequest, queryset: QuerySet[Project], *, active: bool):
        """Like Django's delete_selected: a confirmation page first, then (with `post`) the change, one by one."""
        verb = "activate" if active else "deactivate"
        to_change = [p for p in queryset if p.is_active != active]
        if request.POST.get("post"):
            actor = Actor.from_request(request)
            count = sum(project_set_active(project=p, active=active, actor=actor).changed for p in to_change)
            messages.success(request, f"{verb.capitalize()}d {count} {_plural(count, 'project')}.")
            return None
        context = self.page_context(
            request,
            f"{verb.capitalize()} selected projects?",
            queryset=queryset,
            to_change=to_change,
            active=active,
            verb=verb,
            action=f"{verb}_selected",
            action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
        )
        return TemplateResponse(request, self.set_active_selected_template, context)

    # --- revoke all tokens ---------------------------------------------------------------------------------------

    def revoke_tokens_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        project = self.get_object_or_404(request, object_id, change=True)
        if not request.user.has_perm("tokens.change_token"):
            raise PermissionDenied
        if request.method == "POST":
            count = project_tokens_revoke(project=project, actor=Actor.from_request(request)).revoked
            messages.success(request, f"Revoked {count} {_plural(count, 'token')} of “{project.name}”.")
            return HttpResponseRedirect(self._detail_url(project))
        context = self.page_context(
            request,
            f"Revoke all tokens of “{project.name}”?",
            project=project,
            original=project,
            unrevoked=project_unrevoked_token_count(project),
        )
        return TemplateResponse(request, self.revoke_tokens_template, context)

    # --- the response cache ------------------------------------------------------------------------------------

    def purge_cache_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET asks for confirmation; POST removes the project's cached answers (audited)."""
        project = self.get_object_or_404(request, object_id, change=True)
        if request.method == "POST":
            try:
                removed = cache_purge(project=project, actor=Actor.from_request(request))
            except ServiceError as e:
                messages.error(request, e.text)
            else:
                messages.success(request, f"Removed {removed} cached {_plural(removed, 'answer')} of “{project.name}”.")
            return HttpResponseRedirect(self._detail_url(project))
        context = self.page_context(request, f"Purge the response cache of “{project.name}”?", project=project)
        return TemplateResponse(request, self.purge_cache_template, context)
