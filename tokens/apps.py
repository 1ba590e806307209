from django.apps import AppConfig


class TokensConfig(AppConfig):
    name = "tokens"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import MintingKey, Token

        # Counters and last-used change on every proxied request: usage, not operator actions. The digest is the
        # lookup key for the secret: never shown, so never put in the history either.
        auditlog.register(
            Token, exclude_fields=["request_count", "cache_hit_count", "last_used_at", "digest", *Token.COUNTERS]
        )
        auditlog.register(MintingKey, exclude_fields=["last_used_at", "digest"])
