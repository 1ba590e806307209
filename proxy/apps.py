from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import ModelPrice
        from .services import PRICE_FIELDS

        # Every price change: what each dollar figure rests on (the entry's time of change is the audit entry's).
        auditlog.register(ModelPrice, include_fields=["model", *PRICE_FIELDS, "source"])
