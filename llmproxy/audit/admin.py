"""The audit log: django-auditlog's LogEntry admin, re-registered read-only with the filters operators need."""

from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from llmproxy.admin_toolkit import compact_time, truncated
from llmproxy.templatetags.audit import audit_actor, audit_changes, audit_object_url, audit_via

from .selectors import audit_actor_choices, audit_entries_by_actor


class ActorFilter(admin.SimpleListFilter):
    """Users and program actors (management token, command line, …) alike."""

    title = "actor"
    parameter_name = "actor"

    def lookups(self, request, model_admin):
        return audit_actor_choices()

    def queryset(self, request, queryset):
        return audit_entries_by_actor(queryset, self.value()) if self.value() else queryset


class ObjectTypeFilter(admin.RelatedOnlyFieldListFilter):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.title = "object type"


admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditLogEntryAdmin(LogEntryAdmin):
    list_display = ["created_cell", "action", "resource_link", "msg_short", "actor_display", "remote_addr", "via"]
    list_filter = ["action", ActorFilter, ("content_type", ObjectTypeFilter), ("timestamp", admin.DateFieldListFilter)]
    search_fields = ["object_repr", "=object_pk", "actor_email", f"actor__{get_user_model().USERNAME_FIELD}"]
    readonly_fields = ["created", "resource_url", "action", "actor_display", "remote_addr", "via", "msg"]
    fieldsets = [
        (None, {"fields": ["created", "actor_display", "remote_addr", "via", "resource_url"]}),
        ("Changes", {"fields": ["action", "msg"]}),
    ]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Audit log", **(extra_context or {})})

    @admin.display(description="Time", ordering="timestamp")
    def created(self, entry: LogEntry) -> str:
        return formats.localize(timezone.template_localtime(entry.timestamp))

    @admin.display(description="Time", ordering="timestamp")
    def created_cell(self, entry: LogEntry) -> SafeString:
        return compact_time(entry.timestamp)

    @admin.display(description="Object")
    def resource_link(self, entry: LogEntry) -> SafeString:
        """The changed object (its type, then its name cut to the column), linked to its page when it has one."""
        name = format_html("{}: {}", capfirst(entry.content_type.name), truncated(entry.object_repr))
        url = audit_object_url(entry)
        return format_html('<a href="{}">{}</a>', url, name) if url else name

    @admin.display(description="Changed fields")
    def msg_short(self, entry: LogEntry) -> SafeString | str:
        fields = ", ".join(str(field) for field, _, _ in audit_changes(entry))
        return truncated(fields) if fields else ""

    @admin.display(description="Changes (before → after)")
    def msg(self, entry: LogEntry) -> str:
        rows = audit_changes(entry)
        if not rows:
            return "—"
        return format_html(
            "<table><tr><th>Field</th><th>Before</th><th>After</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="Actor")
    def actor_display(self, entry: LogEntry) -> str:
        return audit_actor(entry)

    @admin.display(description="Via")
    def via(self, entry: LogEntry) -> str:
        return audit_via(entry)
