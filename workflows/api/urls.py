from django.urls import path

from . import views

urlpatterns = [
    path("events", views.events, name="api-events"),
    path("workflows/<slug:slug>", views.workflow, name="api-workflow"),
    path("workflows/<slug:slug>/publish", views.publish, name="api-workflow-publish"),
    path("runs", views.runs, name="api-runs"),
    path("runs/<int:run_id>", views.run, name="api-run"),
]
