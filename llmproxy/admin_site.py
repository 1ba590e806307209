"""The operator UI: Django's admin, with a dashboard as its home page."""

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .security import throttle


class ThrottledLoginForm(AdminAuthenticationForm):
    """The admin's login form: an attempt the login throttle refused says why (how long to wait), not "wrong
    password"."""

    def get_invalid_login_error(self) -> ValidationError:
        if message := throttle.refusal(self.request):
            return ValidationError(message, code="throttled")
        return super().get_invalid_login_error()


class LLMProxyAdminSite(admin.AdminSite):
    site_header = "LLM Proxy"
    site_title = "LLM Proxy admin"
    index_title = "Dashboard"
    login_form = ThrottledLoginForm
    recent_activity_size = 10
    usage_days = 14
    lockout_hours = 24
    budget_alert_days = 7

    @login_not_required
    async def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        """Django's login page; an attempt the login throttle refused is answered only after
        `LOGIN_REFUSAL_DELAY_SECONDS`, waited on the event loop (no thread held), so a client that keeps posting while
        locked out gets few answers a second and costs the workers, and so the proxy, little CPU."""
        response = await sync_to_async(super().login)(request, extra_context)
        if throttle.refusal(request):
            await asyncio.sleep(settings.LOGIN_REFUSAL_DELAY_SECONDS)
        return response

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
        """The dashboard: counts and spend at a glance, budget alerts, usage of the last days, the busiest projects
        and tokens, what expires soon, recent activity, quick actions, then the app list."""
        # Imported here: this module is loaded while the app registry is still being populated.
        from projects.selectors import project_counts
        from proxy.selectors import (
            budget_alerts_recent,
            busiest_projects,
            busiest_tokens,
            cache_savings,
            spend_overview,
            spend_totals,
            usage_daily,
        )
        from tokens.selectors import token_counts, tokens_expiring_soon

        from .audit.selectors import audit_recent_entries
        from .health import usage_degraded
        from .security.selectors import login_lockout_count

        context = {
            "project_counts": project_counts(),
            "token_counts": token_counts(),
            "expiring_soon": tokens_expiring_soon(hours=24),
            "spend": spend_totals(),
            "spend_overview": spend_overview(),
            "budget_alerts": budget_alerts_recent(days=self.budget_alert_days),
            "budget_alert_days": self.budget_alert_days,
            "recent_activity": audit_recent_entries(self.recent_activity_size),
            "login_lockouts": {"count": login_lockout_count(self.lockout_hours), "hours": self.lockout_hours},
            "usage_degraded": usage_degraded(),
            "usage": {
                "daily": usage_daily(days=self.usage_days),
                "busiest_projects": busiest_projects(days=self.usage_days),
                "busiest_tokens": busiest_tokens(days=self.usage_days),
                "cache": cache_savings(days=self.usage_days),
            },
            **(extra_context or {}),
        }
        return super().index(request, context)
