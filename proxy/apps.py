from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import ModelPrice

        # Every price change: what each dollar figure rests on. `updated_at` is the entry's time of change, which the
        # audit entry has already.
        auditlog.register(ModelPrice, exclude_fields=["updated_at"])
