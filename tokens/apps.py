from django.apps import AppConfig
from django.db.models import Model


def own_fields(model: type[Model]) -> list[str]:
    """The model's own fields. Without a list, auditlog also diffs the reverse relations on create (a junk
    `security_events` change in every new token's entry)."""
    return [field.name for field in model._meta.concrete_fields]


class TokensConfig(AppConfig):
    name = "tokens"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import MintingKey, Token

        # Counters and last-used change on every proxied request: usage, not operator actions. The digest is the
        # lookup key for the secret: never shown, so never put in the history either.
        auditlog.register(
            Token,
            include_fields=own_fields(Token),
            exclude_fields=["request_count", "cache_hit_count", "last_used_at", "digest", *Token.COUNTERS],
        )
        auditlog.register(MintingKey, include_fields=own_fields(MintingKey), exclude_fields=["last_used_at", "digest"])
