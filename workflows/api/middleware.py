"""Under /api/, every error is problem+json: unknown paths, wrong methods, even crashes."""

from __future__ import annotations

import logging

from .problems import problem

log = logging.getLogger("signalbox.api")


def _unstorable_query(request) -> bool:
    return any(
        "\x00" in key or any("\x00" in value for value in values)
        for key, values in request.GET.lists()
    )


class ApiProblemMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/") and _unstorable_query(request):
            # Every filter ends in a SQL parameter, and PostgreSQL text cannot hold NUL.
            return problem(
                400,
                "Invalid query",
                "query parameters cannot contain NUL characters",
                kind="invalid-query",
            )
        response = self.get_response(request)
        if not request.path.startswith("/api/") or response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/problem+json"):
            return response
        titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}
        replacement = problem(
            response.status_code,
            titles.get(response.status_code, response.reason_phrase),
            f"{request.method} {request.path}",
        )
        if response.has_header("Allow"):
            replacement["Allow"] = response["Allow"]
        return replacement

    def process_exception(self, request, exception):
        if not request.path.startswith("/api/"):
            return None
        log.exception("API error on %s %s", request.method, request.path)
        return problem(500, "Internal error", "the error was logged", kind="internal")
