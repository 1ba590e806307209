import uuid

from django.db import models


class Import(models.Model):
    """One run of `manage.py import_llm_proxy` that brought something: where from and how much. Creating it writes
    the import's one audit entry; the original's audit events that name no project here hang under it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=500, help_text="The original's database, named without credentials.")
    projects = models.PositiveIntegerField(default=0)
    tokens = models.PositiveIntegerField(default=0)
    audit_events = models.PositiveIntegerField(default=0)
    not_imported = models.PositiveIntegerField(default=0, help_text="Rows that could not be imported.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "LLM Proxy import"

    def __str__(self) -> str:
        return f"Import from the Go LLM Proxy ({self.source})"
