from django.urls import path

from dashboard import (
    connection_views,
    dead_letter_views,
    editor_views,
    event_views,
    overview_views,
    replay_views,
    schema_views,
    secret_views,
    system_views,
    views,
)

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("workflows/", views.workflow_list, name="workflows"),
    # The live dashboard: overview, event flow and lineage, workers and queues.
    path("overview/", overview_views.overview, name="overview"),
    path("overview/demo-traffic/", overview_views.demo_switch, name="demo-traffic"),
    path("flow/", overview_views.flow, name="flow"),
    path("flow/events/<int:event_id>/", overview_views.flow_event, name="flow-event"),
    path("events/<int:event_id>/lineage/", overview_views.lineage, name="lineage"),
    path("system/", system_views.system, name="system"),
    path("connections/", connection_views.connection_list, name="connections"),
    path(
        "connections/<slug:name>/<str:action>/",
        connection_views.connection_action,
        name="connection-action",
    ),
    path("runs/", views.run_list, name="runs"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    # Recovery: replay, cancel, dead letters, bulk/shadow replays, re-drive, audit.
    path("runs/<int:run_id>/recovery/", replay_views.run_panel, name="run-panel"),
    path("runs/<int:run_id>/replay/", replay_views.run_replay, name="run-replay"),
    path("runs/<int:run_id>/cancel/", replay_views.run_cancel, name="run-cancel"),
    path("dead-letters/", dead_letter_views.dead_letter_list, name="dead-letters"),
    path("dead-letters/<int:letter_id>/", dead_letter_views.dead_letter_detail, name="dead-letter"),
    path(
        "dead-letters/<int:letter_id>/edit/",
        dead_letter_views.dead_letter_edit,
        name="dead-letter-edit",
    ),
    path(
        "dead-letters/<int:letter_id>/redrive/",
        dead_letter_views.dead_letter_redrive,
        name="dead-letter-redrive",
    ),
    path(
        "dead-letters/<int:letter_id>/redrive-row/",
        dead_letter_views.dead_letter_redrive_row,
        name="dead-letter-redrive-row",
    ),
    path(
        "dead-letters/<int:letter_id>/discard/",
        dead_letter_views.dead_letter_discard,
        name="dead-letter-discard",
    ),
    path("replays/", replay_views.replay_batches, name="replays"),
    path("replays/shadow/", replay_views.shadow_start, name="shadow-start"),
    path("replays/<int:batch_id>/", replay_views.replay_batch, name="replay-batch"),
    path(
        "replays/<int:batch_id>/cancel/",
        replay_views.replay_batch_cancel,
        name="replay-batch-cancel",
    ),
    path("redrive/", replay_views.redrive_page, name="redrive"),
    path("audit/", replay_views.audit_list, name="audit"),
    path("secrets/", secret_views.secret_list, name="secrets"),
    path("secrets/<str:name>/rotate/", secret_views.secret_rotate, name="secret-rotate"),
    path("secrets/<str:name>/delete/", secret_views.secret_delete, name="secret-delete"),
    path("events/", event_views.event_list, name="events"),
    path("events/send/", event_views.send_event, name="event-send"),
    path("events/<int:event_id>/", event_views.event_detail, name="event"),
    path("schemas/", schema_views.schema_list, name="schemas"),
    path("schemas/<str:name>/", schema_views.schema_type, name="schema"),
    path("schemas/<str:name>/versions/", schema_views.schema_register, name="schema-register"),
    path("schemas/<str:name>/compatibility/", schema_views.schema_mode, name="schema-mode"),
    *editor_views.urlpatterns,
]
