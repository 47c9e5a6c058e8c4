from django.urls import path

from . import event_store, events, views

urlpatterns = [
    path("events", events.events_endpoint, name="api-events"),
    path("events/<int:event_id>", event_store.event_detail, name="api-event"),
    path("workflows/<slug:slug>", views.workflow, name="api-workflow"),
    path("workflows/<slug:slug>/publish", views.publish, name="api-workflow-publish"),
    path("runs", views.runs, name="api-runs"),
    path("runs/<int:run_id>", views.run, name="api-run"),
]
