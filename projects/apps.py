from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "projects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import Project
        from .policy import POLICY_FIELDS

        # Only what an operator changes. The ciphertext is never logged: a key rotation shows up as a change of
        # `api_key_updated_at`. Listing the fields also keeps reverse relations (tokens, …) out of the diffs.
        auditlog.register(
            Project,
            include_fields=[
                *("name", "is_active", "deactivated_at", "api_key_updated_at", "upstream_url", "upstream_auth"),
                *("requests_per_minute", "tokens_per_minute", "budget_usd", "budget_period"),
                *POLICY_FIELDS,
            ],
        )
