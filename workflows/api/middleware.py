"""Every 4xx and 5xx says what went wrong in the caller's language: under /api/ and /hooks/
problem+json (unknown paths, wrong methods, even crashes); elsewhere a page, where Django
would send an empty body (a 405 from require_POST, a bare status)."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.template.loader import render_to_string

from workflows.api.problems import is_api_path, problem

log = logging.getLogger("signalbox.api")

TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}


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
        if response.status_code < 400:
            return response
        if not is_api_path(request.path):
            return self._page_for_empty_error(request, response)
        if response.get("Content-Type", "").startswith("application/problem+json"):
            return response
        replacement = problem(
            response.status_code,
            TITLES.get(response.status_code, response.reason_phrase),
            f"{request.method} {request.path}",
        )
        for header in ("Allow", "Retry-After"):
            if response.has_header(header):
                replacement[header] = response[header]
        return replacement

    @staticmethod
    def _page_for_empty_error(request, response):
        # htmx requests keep their bare status: the page's script shows it in place.
        if response.streaming or response.content or getattr(request, "htmx", False):
            return response
        response.content = render_to_string(
            "error.html",
            {"status": response.status_code, "title": response.reason_phrase.capitalize()},
            request=request,
        )
        response["Content-Type"] = "text/html; charset=utf-8"
        return response

    def process_exception(self, request, exception):
        if not is_api_path(request.path):
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
