from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """The admin, with our own site (dashboard home) as the default site."""

    default_site = "llmproxy.admin_site.LLMProxyAdminSite"


class LLMProxyConfig(AppConfig):
    """The project's own commands (ensure_admin), templates, the audit log's screens and the security events."""

    name = "llmproxy"
    verbose_name = "LLM Proxy"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_login_failed

        from .security.signals import record_failed_login

        user_login_failed.connect(record_failed_login, dispatch_uid="llmproxy.security.failed_login")
