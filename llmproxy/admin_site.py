"""The operator UI: Django's admin, with a dashboard as its home page."""

from django.contrib import admin


class LLMProxyAdminSite(admin.AdminSite):
    site_header = "LLM Proxy"
    site_title = "LLM Proxy admin"
    index_title = "Dashboard"
