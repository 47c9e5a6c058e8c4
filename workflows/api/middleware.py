"""Under /api/, every error is problem+json: unknown paths, wrong methods, even crashes."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError

from .problems import problem

log = logging.getLogger("signalbox.api")


class ApiProblemMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
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
        if isinstance(exception, OperationalError | InterfaceError):
            # The database is away (restarting, unreachable): say so, and when to try again.
            log.warning("database unavailable: %s %s: %s", request.method, request.path, exception)
            response = problem(
                503,
                "Service unavailable",
                "the database cannot be reached; nothing was changed, try again",
                kind="unavailable",
            )
            response["Retry-After"] = "1"
            return response
        log.exception("API error on %s %s", request.method, request.path)
        return problem(500, "Internal error", "the error was logged", kind="internal")
