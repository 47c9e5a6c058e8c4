"""Tables of the read side: projections kept so pages read a few rows, not the event store."""

from django.db import models


class EventRollup(models.Model):
    """How many events of a type one workflow's runs (or nobody's: `workflow` "") produced in
    one closed minute, so the overview counts a window from a few hundred rows, not from
    every event in it (workflows/queries/event_rollups.py). A minute once rolled up is final
    and has a marker row (type ""), even when it had no events."""

    minute = models.DateTimeField()
    type = models.CharField(max_length=255)
    # The owning workflow's slug (queries.events.hidden_events' rule), "" for everyone's.
    workflow = models.CharField(max_length=100)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "type", "workflow"], name="eventrollup_minute_type_workflow"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.minute:%H:%M} {self.type} {self.workflow or '-'}: {self.count}"
