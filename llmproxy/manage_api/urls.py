from django.urls import path, re_path

from . import views

urlpatterns = [
    path("projects", views.ProjectsView.as_view()),
    path("projects/<str:project_id>", views.ProjectDetailView.as_view()),
    path("projects/<str:project_id>/tokens/revoke", views.ProjectTokensRevokeView.as_view()),
    path("projects/<str:project_id>/test-connection", views.ProjectTestConnectionView.as_view()),
    path("cache/purge", views.CachePurgeView.as_view()),
    path("tokens", views.TokensView.as_view()),
    path("tokens/<str:token_id>", views.TokenDetailView.as_view()),
    path("audit", views.AuditView.as_view()),
    path("audit/<str:event_id>", views.AuditDetailView.as_view()),
    path("usage", views.UsageView.as_view()),
    path("prices", views.PricesView.as_view()),
    path("prices/<str:model>", views.PriceDetailView.as_view()),
    path("openapi.json", views.OpenApiView.as_view()),
    re_path(r"^.*$", views.NotFoundView.as_view()),
]
