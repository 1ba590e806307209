from django.apps import AppConfig


class ImporterConfig(AppConfig):
    name = "importer"
    verbose_name = "Imports"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import Import

        # The one audit entry of an import: where from and what it brought (the rows themselves get none).
        auditlog.register(Import, include_fields=["source", "projects", "tokens", "audit_events", "not_imported"])
