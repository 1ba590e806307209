from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """The admin, with our own site (dashboard home) as the default site."""

    default_site = "llmproxy.admin_site.LLMProxyAdminSite"


class LLMProxyConfig(AppConfig):
    """The project's own commands (ensure_admin, …) and templates."""

    name = "llmproxy"
    verbose_name = "LLM Proxy"
