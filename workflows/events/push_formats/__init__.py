"""Cloud push formats a webhook can accept: one module per format behind a registry.

A webhook (`/hooks/<slug>`) reads its body in one of these formats: `plain` (any JSON or
form body becomes the data of one event), Amazon SNS HTTP(S) subscriptions, Amazon
EventBridge API destinations, Azure Event Grid (CloudEvents schema) and Google Cloud Pub/Sub
push subscriptions. Pure: no Django; the caller passes the settings, the clock and a guarded
`fetch` for the few formats that must fetch a certificate or a key set.
"""

from workflows.events.push_formats.base import Delivery, FetchFailed, FormatContext, PushFormatError
from workflows.events.push_formats.registry import FORMATS, NAMES, get_format

__all__ = [
    "FORMATS",
    "NAMES",
    "Delivery",
    "FetchFailed",
    "FormatContext",
    "PushFormatError",
    "get_format",
]
