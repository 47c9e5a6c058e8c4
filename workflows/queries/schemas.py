"""Read queries over the schema registry, shared by the API and the dashboard."""

from __future__ import annotations

from django.db.models import Count, Max

from workflows.events.models import EventSchema, EventType


def event_types() -> list[EventType]:
    """Every registered type, by name, annotated with `latest_version` (None without a
    schema) and `version_count`."""
    return list(
        EventType.objects.annotate(
            latest_version=Max("schemas__version"), version_count=Count("schemas")
        ).order_by("name")
    )


def event_type(name: str) -> EventType | None:
    return (
        EventType.objects.annotate(
            latest_version=Max("schemas__version"), version_count=Count("schemas")
        )
        .filter(name=name)
        .first()
    )


def versions(event_type: EventType) -> list[EventSchema]:
    """Newest first."""
    return list(EventSchema.objects.filter(event_type=event_type).order_by("-version"))


def version(event_type: EventType, number: int | None) -> EventSchema | None:
    """The numbered version, or the latest when `number` is None."""
    found = EventSchema.objects.filter(event_type=event_type)
    if number is None:
        return found.order_by("-version").first()
    return found.filter(version=number).first()
