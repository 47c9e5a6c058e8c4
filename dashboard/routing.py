from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/runs/", consumers.RunListConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/", consumers.RunDetailConsumer.as_asgi()),
]
