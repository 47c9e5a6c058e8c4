"""Bearer-token authentication for the API, with a role per token."""

from __future__ import annotations

import functools

from django.views.decorators.csrf import csrf_exempt

from .. import roles
from ..services.tokens import authenticate_token
from .problems import problem


def token_required(role: str = "viewer"):
    def decorator(view):
        @csrf_exempt  # bearer tokens are not sent by browsers on their own: no CSRF risk
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                return problem(
                    401,
                    "Authentication required",
                    "send Authorization: Bearer <token>",
                    kind="unauthorized",
                )
            token = authenticate_token(credentials.strip())
            if token is None:
                return problem(
                    401, "Invalid token", "the token is unknown or revoked", kind="unauthorized"
                )
            if roles.rank(token.role) < roles.rank(role):
                return problem(403, "Forbidden", f"this needs the {role} role", kind="forbidden")
            request.api_token = token
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
