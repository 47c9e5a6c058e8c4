"""RFC 9457 problem details: every API error is one of these, never an HTML page or a 500."""

from __future__ import annotations

from django.http import JsonResponse

PROBLEM_TYPE_BASE = "https://signalbox.dev/problems/"
# Paths whose callers are programs: every error there is problem+json, never a page.
MACHINE_PATH_PREFIXES = ("/api/", "/hooks/")


def is_api_path(path: str) -> bool:
    return path.startswith(MACHINE_PATH_PREFIXES)


def problem_body(status: int, title: str, detail: str = "", *, kind: str = "", **extra) -> dict:
    return {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
        **({"detail": detail} if detail else {}),
        **extra,
    }


def problem(status: int, title: str, detail: str = "", *, kind: str = "", **extra) -> JsonResponse:
    body = problem_body(status, title, detail, kind=kind, **extra)
    response = JsonResponse(body, status=status, content_type="application/problem+json")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="signalbox"'
    return response
