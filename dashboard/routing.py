from django.urls import path, re_path

from dashboard.editor import consumers as editor_consumers
from dashboard.live import consumers as live_consumers
from dashboard.live import partial_consumers as consumers
from dashboard.recovery import replay_consumers

websocket_urlpatterns = [
    path("ws/runs/", consumers.RunListConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/", consumers.RunDetailConsumer.as_asgi()),
    path("ws/workflows/<slug:slug>/editor/", editor_consumers.EditorConsumer.as_asgi()),
    path("ws/overview/", live_consumers.OverviewConsumer.as_asgi()),
    path("ws/flow/", live_consumers.FlowConsumer.as_asgi()),
    path("ws/flow-map/", live_consumers.FlowMapConsumer.as_asgi()),
    path("ws/lineage/<int:event_id>/", live_consumers.LineageConsumer.as_asgi()),
    path("ws/system/", live_consumers.SystemConsumer.as_asgi()),
    path("ws/replays/<int:batch_id>/", replay_consumers.ReplayBatchConsumer.as_asgi()),
    # Last: any other path is refused with 4404 instead of crashing the router (a 500).
    re_path(r"", consumers.NoSuchSocket.as_asgi()),
]
