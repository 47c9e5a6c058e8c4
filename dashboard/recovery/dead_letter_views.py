"""The dead-letter queue's pages: list, detail, edit, re-drive (one, selected, or a row)
and discard. Reading is for viewers; every action needs the operator role.

A letter that belongs to a workflow of another team (replay_selectors.letters_touching) is
not there for this user: left out of the list, 404 on its pages and actions, refused (as an
unknown id) in a bulk re-drive.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.access import role_required
from dashboard.recovery.access import can_operate, require_operator
from workflows.events.models import Event
from workflows.queries import dashboard as ds
from workflows.queries import events as store
from workflows.recovery import dead_letters as dlq
from workflows.recovery import replay as replays
from workflows.recovery import selectors as recovery
from workflows.recovery.dead_letter_preview import preview_redrive
from workflows.runs.models import Run


# --- the dead-letter queue -----------------------------------------------------------------------
# A letter that belongs to a workflow of another team (replay_selectors.letters_touching) is
# not there for this user: left out of the list, 404 on its pages and actions, refused (as an
# unknown id) in a bulk re-drive.
def _redrive_version(request) -> str:
    chosen = request.POST.get("version")
    return chosen if chosen in (replays.VERSION_ORIGINAL, replays.VERSION_LATEST) else "original"


def _redrive_selected(request, ids: list[int], hidden: frozenset[int]) -> list[dict[str, Any]]:
    allowed = recovery.visible_dead_letter_ids(ids, hidden=hidden)
    done = {
        result["id"]: result
        for result in dlq.redrive_many(
            letter_ids=[i for i in ids if i in allowed],
            actor=request.user.get_username(),
            reason=(request.POST.get("reason") or "").strip(),
            version=_redrive_version(request),
        )
    }
    # The same answer as for an id that does not exist: nothing tells the two apart.
    unknown = {"ok": False, "error": "no such dead letter"}
    return [done.get(i) or {"id": i, **unknown} for i in ids]


def _preview_selected(request, ids: list[int], hidden: frozenset[int]):
    allowed = recovery.visible_dead_letter_ids(ids, hidden=hidden)
    # Another team's letter previews as an unknown id does, as the re-drive answers it.
    return preview_redrive(
        letter_ids=ids, version=_redrive_version(request), unknown=set(ids) - allowed
    )


def _bulk_redrive(request, hidden: frozenset[int]):
    """Selected letters: first a preview (what each re-drive does, to which workflow and
    version, which cannot be re-driven and why) to confirm; then each letter's outcome."""
    ids = list(dict.fromkeys(int(i) for i in request.POST.getlist("ids") if i.isdigit()))
    if not ids:
        messages.error(request, "Select the dead letters to re-drive.")
        return redirect(reverse("dashboard:dead-letters") + "?" + request.GET.urlencode())
    context: dict[str, Any] = {
        "ids": ids,
        "reason": (request.POST.get("reason") or "").strip(),
        "version": _redrive_version(request),
        "back": reverse("dashboard:dead-letters") + "?" + request.GET.urlencode(),
    }
    if request.POST.get("confirm") != "yes":
        previews = _preview_selected(request, ids, hidden)
        context["previews"] = previews
        context["can_count"] = sum(1 for p in previews if p.can)
        return render(request, "dashboard/dead_letters_redrive.html", context)
    if request.htmx:
        # Live: the page lists the letters at once and re-drives them one by one, each row
        # showing its outcome as it comes (dead_letter_redrive_row).
        context["live"] = [
            {
                "id": letter_id,
                "vals": json.dumps(
                    {
                        "reason": context["reason"],
                        "version": context["version"],
                        "next": ids[i + 1] if i + 1 < len(ids) else "",
                    }
                ),
            }
            for i, letter_id in enumerate(ids)
        ]
        return render(request, "dashboard/dead_letters_redrive.html", context)
    results = _redrive_selected(request, ids, hidden)
    context["results"] = results
    context["ok_count"] = sum(1 for r in results if r["ok"])
    return render(request, "dashboard/dead_letters_redrive.html", context)


@role_required("viewer")
@require_http_methods(["GET", "POST"])
def dead_letter_list(request):
    hidden = ds.hidden_workflow_ids(request.user)
    if request.method == "POST":  # re-drive the selected letters
        require_operator(request)
        return _bulk_redrive(request, hidden)
    state = (
        request.GET.get("state")
        if request.GET.get("state") in ("open", "resolved", "all")
        else "open"
    )
    kind = request.GET.get("kind") if request.GET.get("kind") in ("step", "bus", "event") else ""
    page, more = recovery.dead_letters(
        state=state, kind=kind, limit=recovery.PAGE_SIZE, hidden=hidden
    )
    return render(
        request,
        "dashboard/dead_letters.html",
        {
            "letters": page,
            "more": more,
            "state": state,
            "kind": kind,
            "open_count": recovery.open_dead_letter_count(hidden=hidden),
            "can_operate": can_operate(request),
        },
    )


@role_required("operator")
@require_POST
def dead_letter_redrive_row(request, letter_id: int):
    """Re-drive one letter of a live bulk re-drive; answer its outcome row and start the
    next letter's (a client event, so the letters go one after the other)."""
    [result] = _redrive_selected(request, [letter_id], ds.hidden_workflow_ids(request.user))
    response = render(request, "dashboard/_redrive_result_row.html", {"result": result})
    following = request.POST.get("next") or ""
    if following.isdigit():
        response["HX-Trigger"] = json.dumps({f"redrive-go-{following}": True})
    else:
        response["HX-Trigger"] = json.dumps({"redrive-finished": True})
    return response


def _letter_or_404(request, letter_id: int):
    letter = recovery.dead_letter(letter_id, hidden=ds.hidden_workflow_ids(request.user))
    if letter is None:
        raise Http404("no such dead letter")
    return letter


@role_required("viewer")
def dead_letter_detail(
    request,
    letter_id: int,
    *,
    payload_text: str | None = None,
    error: str | None = None,
    status: int = 200,
):
    letter = _letter_or_404(request, letter_id)
    return render(
        request,
        "dashboard/dead_letters_detail.html",
        {
            "letter": letter,
            "payload_text": payload_text
            if payload_text is not None
            else json.dumps(letter.payload, indent=2),
            "error": error,
            "entries": recovery.audit_entries(target_type="dead_letter", target_id=str(letter.pk))[
                0
            ],
            "can_operate": can_operate(request),
        },
        status=status,
    )


@role_required("operator")
@require_POST
def dead_letter_edit(request, letter_id: int):
    _letter_or_404(request, letter_id)
    text = request.POST.get("payload") or ""
    try:
        payload = json.loads(text)
        dlq.edit_payload(
            letter_id=letter_id,
            payload=payload,
            actor=request.user.get_username(),
            reason=(request.POST.get("reason") or "").strip(),
        )
    except ValueError as exc:
        return dead_letter_detail(
            request,
            letter_id,
            payload_text=text,
            error=f"The payload is not JSON: {exc}",
            status=400,
        )
    except dlq.DeadLetterError as exc:
        return dead_letter_detail(
            request, letter_id, payload_text=text, error=str(exc), status=exc.status
        )
    messages.success(request, "Payload saved; the original is kept beside it.")
    return redirect("dashboard:dead-letter", letter_id=letter_id)


@role_required("operator")
@require_POST
def dead_letter_redrive(request, letter_id: int):
    _letter_or_404(request, letter_id)
    try:
        done = dlq.redrive(
            letter_id=letter_id,
            actor=request.user.get_username(),
            reason=(request.POST.get("reason") or "").strip(),
        )
    except dlq.DeadLetterError as exc:
        return dead_letter_detail(request, letter_id, error=str(exc), status=exc.status)
    messages.success(request, f"Re-driven: {done.resolution}.")
    # Matching an event again may start runs of another team's workflow, and so make the
    # letter theirs too: go where this user may look.
    hidden = ds.hidden_workflow_ids(request.user)
    shown = Run.objects.filter(pk__in=done.runs).exclude(workflow_id__in=sorted(hidden))
    first = shown.order_by("id").values_list("pk", flat=True).first()
    if first is not None:
        return redirect("dashboard:run", run_id=first)
    # An event ingested again reaches its workflows through the bus, after this answer: its
    # lineage page shows each run as it starts.
    if not done.runs and done.event is not None:
        event = Event.objects.filter(pk=done.event).first()
        if event is not None and not store.is_hidden(event, hidden=hidden):
            return redirect("dashboard:lineage", event_id=event.pk)
    if recovery.dead_letter(letter_id, hidden=hidden) is None:
        return redirect("dashboard:dead-letters")
    return redirect("dashboard:dead-letter", letter_id=letter_id)


@role_required("operator")
@require_POST
def dead_letter_discard(request, letter_id: int):
    _letter_or_404(request, letter_id)
    try:
        dlq.discard(
            letter_id=letter_id,
            actor=request.user.get_username(),
            reason=request.POST.get("reason") or "",
        )
    except dlq.DeadLetterError as exc:
        return dead_letter_detail(request, letter_id, error=str(exc), status=exc.status)
    messages.success(request, "Discarded; the decision is in the audit trail.")
    return redirect("dashboard:dead-letter", letter_id=letter_id)
