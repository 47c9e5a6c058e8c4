from django.urls import path

from . import event_views, schema_views, views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("workflows/", views.workflow_list, name="workflows"),
    path("runs/", views.run_list, name="runs"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("events/", event_views.event_list, name="events"),
    path("events/send/", event_views.send_event, name="event-send"),
    path("events/<int:event_id>/", event_views.event_detail, name="event"),
    path("schemas/", schema_views.schema_list, name="schemas"),
    path("schemas/<str:name>/", schema_views.schema_type, name="schema"),
    path("schemas/<str:name>/versions/", schema_views.schema_register, name="schema-register"),
    path("schemas/<str:name>/compatibility/", schema_views.schema_mode, name="schema-mode"),
]
