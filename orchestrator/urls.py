import os

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard.login import LoginView
from workflows.api import health, metrics

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("api/v1/", include("workflows.api.urls")),
    path("hooks/", include("workflows.api.hook_urls")),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("dashboard.urls")),
]

if os.environ.get("SIGNALBOX_BENCH_BASELINE") == "1":  # set only by `python -m bench.ingest`
    from bench.baseline import baseline

    urlpatterns.insert(0, path("bench/baseline", baseline))

# Errors raised outside the views answer problem+json under /api/ too (error_views.py).
handler400 = "orchestrator.error_views.bad_request"
handler403 = "orchestrator.error_views.permission_denied"
handler404 = "orchestrator.error_views.page_not_found"
handler500 = "orchestrator.error_views.server_error"
