from django.urls import path

from workflows.api import (
    circuits,
    connections,
    editor,
    event_store,
    events,
    openapi,
    replay,
    schemas,
    secrets,
    views,
)
from workflows.api.webhooks import webhooks_endpoint

urlpatterns = [
    path("openapi.json", openapi.openapi_json, name="api-openapi"),
    path("events", events.events_endpoint, name="api-events"),
    path("events/<int:event_id>", event_store.event_detail, name="api-event"),
    path("workflows/<slug:slug>", views.workflow, name="api-workflow"),
    path("workflows/<slug:slug>/publish", views.publish, name="api-workflow-publish"),
    path("workflows/<slug:slug>/runs", views.start_run, name="api-workflow-start"),
    path("runs", views.runs, name="api-runs"),
    path("runs/<int:run_id>", views.run, name="api-run"),
    path("runs/<int:run_id>/cancel", views.cancel, name="api-run-cancel"),
    # Recovery: replay, dead letters, re-drive, bulk and shadow replays, audit (api/replay.py).
    path("runs/<int:run_id>/replay", replay.replay, name="api-run-replay"),
    path("runs/<int:run_id>/replay-preview", replay.replay_preview, name="api-run-replay-preview"),
    path("runs/<int:run_id>/compare", replay.compare, name="api-run-compare"),
    path("dead-letters", replay.dead_letter_list, name="api-dead-letters"),
    path("dead-letters/redrive", replay.dead_letters_redrive, name="api-dead-letters-redrive"),
    path("dead-letters/<int:letter_id>", replay.dead_letter, name="api-dead-letter"),
    path(
        "dead-letters/<int:letter_id>/redrive",
        replay.dead_letter_redrive,
        name="api-dead-letter-redrive",
    ),
    path(
        "dead-letters/<int:letter_id>/discard",
        replay.dead_letter_discard,
        name="api-dead-letter-discard",
    ),
    path("redrive", replay.redrive, name="api-redrive"),
    path("replays", replay.bulk_replay, name="api-replays"),
    path("replays/<int:batch_id>", replay.batch, name="api-replay-batch"),
    path("workflows/<slug:slug>/shadow", replay.shadow, name="api-workflow-shadow"),
    path("audit", replay.audit_list, name="api-audit"),
    path("webhooks", webhooks_endpoint, name="api-webhooks"),
    path("secrets", secrets.secret_list, name="api-secrets"),
    path("secrets/<str:name>", secrets.secret_detail, name="api-secret"),
    path("connections", connections.connection_list, name="api-connections"),
    path("connections/<slug:name>", connections.connection_detail, name="api-connection"),
    path("circuits", circuits.circuit_list, name="api-circuits"),
    path("circuits/<str:host>/reset", circuits.circuit_reset, name="api-circuit-reset"),
    path("schemas", schemas.schema_list, name="api-schemas"),
    path("schemas/<str:name>", schemas.event_type, name="api-schema-type"),
    path("schemas/<str:name>/versions", schemas.versions, name="api-schema-versions"),
    path("schemas/<str:name>/versions/latest", schemas.version, name="api-schema-latest"),
    path("schemas/<str:name>/versions/<int:number>", schemas.version, name="api-schema-version"),
    # The editor: drafts, versions, diff, restore, try, export/import (api/editor.py).
    *editor.urlpatterns,
]
