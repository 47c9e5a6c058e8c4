"""What re-driving dead letters would do, letter by letter, before anything is done.

A bulk re-drive asks for confirmation: the operator sees how many letters will be
re-driven, to which workflow and version each goes, and which cannot be and why. Nothing
here writes; the same checks run again when the re-drive is confirmed.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from workflows.catalog.models import Workflow
from workflows.events.envelope import InvalidEvent, from_structured
from workflows.events.models import DeadLetter, Event
from workflows.recovery.dead_letters import DeadLetterError, event_id_of
from workflows.recovery.replay import FROM_FAILED, VERSION_ORIGINAL, ReplayError, plan_replay


@dataclass(frozen=True)
class LetterPreview:
    letter_id: int
    kind: str
    can: bool
    action: str  # what the re-drive does, or why it cannot
    workflow: str = ""  # the workflow it goes to ("" when its triggers decide)
    version: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.letter_id,
            "kind": self.kind,
            "can_redrive": self.can,
            "action": self.action,
            "workflow": self.workflow or None,
            "version": self.version,
        }


def preview_redrive(
    *, letter_ids: list[int], version: str = VERSION_ORIGINAL, unknown: Set[int] = frozenset()
) -> list[LetterPreview]:
    """One preview per id, in the order given; an id that does not exist, or is in `unknown`
    (a letter the asker may not see), answers "no such dead letter"."""
    letters = DeadLetter.objects.select_related("run__workflow", "run__version").in_bulk(
        [i for i in letter_ids if i not in unknown]
    )
    return [_preview(letters.get(i), i, version=version) for i in letter_ids]


def _preview(letter: DeadLetter | None, letter_id: int, *, version: str) -> LetterPreview:
    if letter is None:
        return LetterPreview(letter_id, "", False, "no such dead letter")
    refused = _refusal(letter)
    if refused:
        return LetterPreview(letter.pk, letter.kind, False, refused)
    try:
        return _what_it_does(letter, version=version)
    except (DeadLetterError, ReplayError) as exc:
        return LetterPreview(letter.pk, letter.kind, False, f"cannot re-drive: {exc}")


def _refusal(letter: DeadLetter) -> str:
    if letter.resolved_at is not None:
        return f"already resolved by {letter.resolved_by} ({letter.resolution})"
    return ""


def _what_it_does(letter: DeadLetter, *, version: str) -> LetterPreview:
    payload = letter.payload if isinstance(letter.payload, dict) else {}
    if letter.kind == "step":
        run = letter.run
        if run is None:
            raise DeadLetterError("the run of this step dead letter no longer exists")
        start = FROM_FAILED if run.status == "failed" else letter.step_id
        plan = plan_replay(run=run, from_step=start, version=version)
        where = "the failed step" if start == FROM_FAILED else f"step {start}"
        return LetterPreview(
            letter.pk,
            letter.kind,
            True,
            f"replays run {run.pk} from {where} "
            f"({len(plan.reused)} step(s) reused, {len(plan.rerun)} run again)",
            workflow=run.workflow.slug,
            version=plan.version.number,
        )
    if isinstance(payload.get("cloudevent"), dict):
        try:
            envelope = from_structured(payload["cloudevent"])
        except InvalidEvent as exc:
            raise DeadLetterError(f"the CloudEvent is still invalid: {exc}") from exc
        return LetterPreview(
            letter.pk,
            letter.kind,
            True,
            f"stores the CloudEvent {envelope.type} from {envelope.source} again; "
            "the workflows whose triggers match it start",
        )
    if payload.get("channel") == "stream" and isinstance(payload.get("fields"), dict):
        return LetterPreview(
            letter.pk,
            letter.kind,
            True,
            f"turns the entry of stream {payload.get('stream', '?')} into an event again",
        )
    if payload.get("guard") == "causation-depth" and letter.event_id:
        slugs = [str(s) for s in payload.get("workflows", []) if isinstance(s, str)]
        published = dict(
            Workflow.objects.filter(slug__in=slugs, published_version__isnull=False).values_list(
                "slug", "published_version__number"
            )
        )
        if not published:
            raise DeadLetterError("none of the workflows the event was cut from is published")
        return LetterPreview(
            letter.pk,
            letter.kind,
            True,
            f"delivers event {letter.event_id} past the depth guard to "
            + ", ".join(f"{slug} v{number}" for slug, number in published.items()),
            workflow=", ".join(published),
        )
    event_id = letter.event_id or payload.get("event_id")
    if event_id:
        event_id = event_id_of(event_id)
        if not Event.objects.filter(pk=event_id).exists():
            raise DeadLetterError(f"event {event_id} is no longer in the event store")
        return LetterPreview(
            letter.pk,
            letter.kind,
            True,
            f"matches event {event_id} against the triggers again",
        )
    raise DeadLetterError("it names no run, event or CloudEvent; edit its payload or discard it")
