"""/hooks/<slug>: the public webhook receiver (mounted at the site root, outside /api/)."""

from django.urls import path

from workflows.api.webhooks import receive

urlpatterns = [
    # str, not slug: any name gets a problem+json 404 from the view, not Django's HTML page.
    path("<str:slug>", receive, name="webhook-receive"),
]
