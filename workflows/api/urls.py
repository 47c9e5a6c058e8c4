from django.urls import path

from . import events, views

urlpatterns = [
    path("events", events.post_events, name="api-events"),
    path("workflows/<slug:slug>", views.workflow, name="api-workflow"),
    path("workflows/<slug:slug>/publish", views.publish, name="api-workflow-publish"),
    path("runs", views.runs, name="api-runs"),
    path("runs/<int:run_id>", views.run, name="api-run"),
]
