from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "projects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import Project

        # The ciphertext is never logged: a key rotation shows up as a change of `api_key_updated_at`.
        auditlog.register(Project, exclude_fields=["api_key_ciphertext", "updated_at"])
