from django.urls import path

from . import circuits, event_store, events, schemas, views
from .webhooks import webhooks_endpoint

urlpatterns = [
    path("events", events.events_endpoint, name="api-events"),
    path("events/<int:event_id>", event_store.event_detail, name="api-event"),
    path("workflows/<slug:slug>", views.workflow, name="api-workflow"),
    path("workflows/<slug:slug>/publish", views.publish, name="api-workflow-publish"),
    path("workflows/<slug:slug>/runs", views.start_run, name="api-workflow-start"),
    path("runs", views.runs, name="api-runs"),
    path("runs/<int:run_id>", views.run, name="api-run"),
    path("runs/<int:run_id>/cancel", views.cancel, name="api-run-cancel"),
    path("webhooks", webhooks_endpoint, name="api-webhooks"),
    path("circuits", circuits.circuit_list, name="api-circuits"),
    path("circuits/<str:host>/reset", circuits.circuit_reset, name="api-circuit-reset"),
    path("schemas", schemas.schema_list, name="api-schemas"),
    path("schemas/<str:name>", schemas.event_type, name="api-schema-type"),
    path("schemas/<str:name>/versions", schemas.versions, name="api-schema-versions"),
    path("schemas/<str:name>/versions/latest", schemas.version, name="api-schema-latest"),
    path("schemas/<str:name>/versions/<int:number>", schemas.version, name="api-schema-version"),
]
