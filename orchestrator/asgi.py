"""ASGI entry point: HTTP goes to Django (event POSTs by a fast path), WebSockets to the
dashboard's consumers, the lifespan protocol to the process's heartbeat."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from workflows.api.fast_events import FastEventIngest  # noqa: E402
from workflows.live.socket_clients import CountSockets  # noqa: E402
from workflows.operations.web_heartbeat import Lifespan  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Event POSTs that will be accepted skip Django's request cycle (api/fast_events.py).
        "http": FastEventIngest(django_asgi_app),
        # Sockets are counted for /metrics across web processes (workflows/live/socket_clients.py).
        "websocket": CountSockets(
            AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
        # Each web process beats while it serves (`manage.py status`, the workers page).
        "lifespan": Lifespan(),
    }
)

# What is loaded by now (Django, the apps, the URL map) lives as long as the process: out of
# the collector's way, so that an old-generation pass, which stops every socket's frame
# while it walks the heap, walks only what serving made (docs/architecture.md, Push).
gc.freeze()
