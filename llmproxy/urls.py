from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import include, path

from llmproxy import health
from proxy.metrics import metrics_view

urlpatterns = [
    path("", lambda request: HttpResponseRedirect("/admin/")),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("health", health.health, name="health"),  # the Go LLM Proxy's probes, for monitors set up for it
    path("ready", health.ready, name="ready"),
    path("live", health.live, name="live"),
    path("metrics", metrics_view, name="metrics"),
    path("manage/", include("llmproxy.manage_api.urls")),
]
