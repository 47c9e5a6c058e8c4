"""Django's error views (handler400/403/404/500): problem+json for API and webhook paths,
a page for the browser.

An exception raised outside the views (a disallowed Host header checked by a middleware,
a request body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many form fields) never passes
through ApiProblemMiddleware, so without these an API client got Django's bare HTML
"Bad Request (400)".
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.views import defaults

from workflows.api.problems import is_api_path, problem


def bad_request(request, exception):
    if is_api_path(request.path):
        return problem(400, "Bad request", "the request could not be read", kind="bad-request")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if is_api_path(request.path):
        return problem(403, "Forbidden", str(exception or ""), kind="forbidden")
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    if is_api_path(request.path):
        return problem(404, "Not found", f"{request.method} {request.path}")
    return defaults.page_not_found(request, exception)


def server_error(request):
    if is_api_path(request.path):
        return problem(500, "Internal error", "the error was logged", kind="internal")
    return defaults.server_error(request)


def csrf_failure(request, reason=""):
    """A form posted without a valid CSRF token (an expired page, cookies off, or a forged
    request from another site): the site's own 403 page says what to do."""
    if is_api_path(request.path):
        return problem(403, "Forbidden", "CSRF verification failed", kind="forbidden")
    return defaults.permission_denied(
        request,
        PermissionDenied(
            "This form could not be verified (its CSRF token is missing or expired). "
            "Reload the page and send it again."
        ),
    )
