"""Act on dead letters: edit the payload, re-drive, or discard with a reason.

Nothing leaves the queue without a recorded decision: a letter is closed by setting
`resolved_at`, `resolved_by` and `resolution` together with an AuditEntry, in one
transaction; rows are never deleted. What re-driving means depends on what died:

- a step (its attempts ran out): replay the run from the failed step. An edited payload
  may carry `"input"`: the replay then sees it as the event's data.
- a CloudEvent that could not be stored (`payload.cloudevent`: a run or schedule event that
  broke its schema): ingest the (edited) CloudEvent again.
- an external stream entry (`payload.fields`): turn the (edited) fields into an event again.
- an event cut by the causation-depth guard: deliver it to the workflows it would have
  started (an operator decided the chain is fine).
- a poison bus entry: match the stored event against the triggers again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from workflows.access import audit
from workflows.catalog.models import Workflow
from workflows.events.envelope import InvalidEvent, from_structured
from workflows.events.models import DeadLetter, Event
from workflows.recovery.replay import (
    FROM_FAILED,
    UNCHANGED,
    VERSION_ORIGINAL,
    ReplayError,
    replay_run,
)

log = logging.getLogger("signalbox.dead_letters")


class DeadLetterError(Exception):
    def __init__(self, message: str, *, status: int = 409, kind: str = "dead-letter"):
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class Redriven:
    letter: DeadLetter
    resolution: str
    runs: list[int]
    event: int | None = None


def _open_letter(letter_id: int) -> DeadLetter:
    # Lock the letter: two operators acting on it at once must not both close it.
    letter = DeadLetter.objects.select_for_update().filter(pk=letter_id).first()
    if letter is None:
        raise DeadLetterError(f"no dead letter {letter_id}", status=404, kind="not-found")
    if letter.resolved_at is not None:
        raise DeadLetterError(
            f"dead letter {letter_id} was already resolved by {letter.resolved_by} "
            f"({letter.resolution})",
            kind="already-resolved",
        )
    return letter


def _close(letter: DeadLetter, *, actor: str, resolution: str) -> None:
    letter.resolved_at = timezone.now()
    letter.resolved_by = actor
    letter.resolution = resolution[:500]
    letter.save(update_fields=["resolved_at", "resolved_by", "resolution"])


def edit_payload(*, letter_id: int, payload: Any, actor: str, reason: str = "") -> DeadLetter:
    """Replace an open letter's payload; the first edit keeps the original beside it."""
    if not isinstance(payload, dict):
        raise DeadLetterError("the payload must be a JSON object", status=400, kind="invalid-body")
    with transaction.atomic():
        letter = _open_letter(letter_id)
        before = letter.payload
        if letter.original_payload is None:
            letter.original_payload = before
        letter.payload = payload
        letter.save(update_fields=["payload", "original_payload"])
        audit.record(
            actor=actor,
            action="dead_letter.edit",
            target_type="dead_letter",
            target_id=letter.pk,
            reason=reason,
            details={"before": before, "after": payload},
        )
    return letter


def discard(*, letter_id: int, actor: str, reason: str) -> DeadLetter:
    reason = (reason or "").strip()
    if not reason:
        raise DeadLetterError(
            "say why the dead letter is discarded (a reason is required)",
            status=400,
            kind="reason-required",
        )
    with transaction.atomic():
        letter = _open_letter(letter_id)
        _close(letter, actor=actor, resolution=f"discarded: {reason}")
        audit.record(
            actor=actor,
            action="dead_letter.discard",
            target_type="dead_letter",
            target_id=letter.pk,
            reason=reason,
            details={"kind": letter.kind, "payload": letter.payload},
        )
    return letter


def redrive(
    *,
    letter_id: int,
    actor: str,
    reason: str = "",
    version: str = VERSION_ORIGINAL,
    renew_idempotency_keys: bool = False,
) -> Redriven:
    """Re-drive one open letter. Raises DeadLetterError (the letter stays open) when the
    re-drive fails, e.g. the edited event still breaks its schema."""
    with transaction.atomic():
        letter = _open_letter(letter_id)
        try:
            with transaction.atomic():
                resolution, runs, event = _redrive(
                    letter,
                    actor=actor,
                    reason=reason,
                    version=version,
                    renew=renew_idempotency_keys,
                )
        except ReplayError as exc:
            raise DeadLetterError(
                f"cannot re-drive: {exc}", status=exc.status, kind=exc.kind
            ) from exc
        _close(letter, actor=actor, resolution=f"re-driven: {resolution}")
        audit.record(
            actor=actor,
            action="dead_letter.redrive",
            target_type="dead_letter",
            target_id=letter.pk,
            reason=reason,
            details={
                "kind": letter.kind,
                "runs": runs,
                "event": event,
                "edited": letter.original_payload is not None,
                "payload": letter.payload,
            },
        )
    return Redriven(letter=letter, resolution=resolution, runs=runs, event=event)


def redrive_many(
    *,
    letter_ids: list[int],
    actor: str,
    reason: str = "",
    version: str = VERSION_ORIGINAL,
) -> list[dict[str, Any]]:
    """Re-drive each letter on its own: one failing leaves the others done, and every
    letter gets an outcome. Even a letter that breaks in a way nobody foresaw (a poison
    payload) is reported as not re-driven instead of failing the whole request half-way:
    each re-drive commits or rolls back by itself, so an error page would hide which
    letters were already re-driven."""
    results = []
    for letter_id in letter_ids:
        try:
            done = redrive(letter_id=letter_id, actor=actor, reason=reason, version=version)
        except DeadLetterError as exc:
            results.append({"id": letter_id, "ok": False, "error": str(exc)})
        except Exception as exc:
            log.exception("re-drive of dead letter %s", letter_id)
            results.append(
                {
                    "id": letter_id,
                    "ok": False,
                    "error": f"cannot re-drive: an unexpected error ({type(exc).__name__}); "
                    "it is logged, the letter stays open",
                }
            )
        else:
            results.append(
                {
                    "id": letter_id,
                    "ok": True,
                    "resolution": done.resolution,
                    "runs": done.runs,
                    "event": done.event,
                }
            )
    return results


def _redrive(
    letter: DeadLetter, *, actor: str, reason: str, version: str, renew: bool
) -> tuple[str, list[int], int | None]:
    payload = letter.payload if isinstance(letter.payload, dict) else {}
    if letter.kind == "step":
        if letter.run_id is None:
            raise DeadLetterError(
                "the run of this step dead letter no longer exists; discard it with a reason"
            )
        new = replay_run(
            run_id=letter.run_id,
            actor=actor,
            from_step=FROM_FAILED if letter.run.status == "failed" else letter.step_id,
            version=version,
            input=payload.get("input", UNCHANGED),
            renew_idempotency_keys=renew,
            reason=reason or f"re-drive of dead letter {letter.pk}",
        )
        return f"replayed as run {new.pk}", [new.pk], None
    if isinstance(payload.get("cloudevent"), dict):
        return _ingest(payload["cloudevent"], channel=str(payload.get("channel") or "http"))
    if payload.get("channel") == "stream" and isinstance(payload.get("fields"), dict):
        return _ingest_stream_entry(payload)
    if payload.get("guard") == "causation-depth" and letter.event_id:
        return _deliver_past_guard(letter, payload, actor=actor, reason=reason)
    event_id = letter.event_id or payload.get("event_id")
    if event_id:
        from workflows.runs.matching import match_event

        event_id = event_id_of(event_id)

        if not Event.objects.filter(pk=event_id).exists():
            raise DeadLetterError(f"event {event_id} is no longer in the event store")
        runs = [r.pk for r in match_event(event_id=int(event_id))]
        return (f"event {event_id} matched again ({len(runs)} new run(s))", runs, int(event_id))
    raise DeadLetterError(
        "this dead letter names no run, event or CloudEvent to re-drive; "
        "edit its payload or discard it with a reason"
    )


def event_id_of(value: Any) -> int:
    """An event id from an (edited) payload; anything but a whole number is refused."""
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.isdigit())
    ):
        raise DeadLetterError(
            f"event_id must be a whole number, not {value!r}; edit the payload",
            status=400,
            kind="invalid-payload",
        )
    return int(value)


def _ingest(cloudevent: dict, *, channel: str) -> tuple[str, list[int], int | None]:
    return _ingest_envelope(
        lambda: from_structured(cloudevent),
        channel=channel,
        invalid="the CloudEvent is still invalid",
    )


def _ingest_stream_entry(payload: dict) -> tuple[str, list[int], int | None]:
    from workflows.events.external_streams import envelope_from_fields
    from workflows.events.models import StreamSource

    source = StreamSource.objects.filter(name=payload.get("source", "")).first()
    return _ingest_envelope(
        lambda: envelope_from_fields(
            {str(k): str(v) for k, v in payload["fields"].items()},
            stream=str(payload.get("stream", "")),
            entry_id=str(payload.get("entry_id", "")),
            default_type=source.default_type if source else "",
        ),
        channel="stream",
        invalid="the entry is still not a valid CloudEvent",
    )


def _ingest_envelope(build, *, channel: str, invalid: str) -> tuple[str, list[int], int | None]:
    """Ingest what a dead letter held, as new; still-bad input stays in the queue (400)."""
    from workflows.events.intake import ingest_event
    from workflows.events.schemas import SchemaViolation

    try:
        event, created = ingest_event(envelope=build(), channel=channel)
    except InvalidEvent as exc:
        raise DeadLetterError(f"{invalid}: {exc}", status=400, kind="invalid-event") from exc
    except SchemaViolation as exc:
        raise DeadLetterError(
            f"the event still breaks its schema: {exc}", status=400, kind="schema-violation"
        ) from exc
    word = "ingested" if created else "already stored"
    return f"{word} as event {event.pk}", [], event.pk


def _deliver_past_guard(
    letter: DeadLetter, payload: dict, *, actor: str, reason: str
) -> tuple[str, list[int], int | None]:
    from workflows.recovery.redrive import deliver

    runs = []
    for slug in payload.get("workflows", []):
        workflow = Workflow.objects.select_related("published_version").filter(slug=slug).first()
        if workflow is None or workflow.published_version is None:
            continue
        runs.append(
            deliver(event=letter.event, workflow=workflow, version=workflow.published_version).pk
        )
    if not runs:
        raise DeadLetterError("none of the workflows the event was cut from is published now")
    return (
        f"event {letter.event_id} delivered past the depth guard to run(s) "
        + ", ".join(map(str, runs)),
        runs,
        letter.event_id,
    )
