"""The Content-Security-Policy header, built from settings.SECURE_CSP.

Django 5.2 has no CSP support of its own (Django 6.0 adds one, with the same setting name);
the policy is one fixed header with no nonces, so a few lines serve where a dependency
(django-csp) would add nothing.
"""

from __future__ import annotations

from django.conf import settings


def policy_header(directives: dict[str, list[str]]) -> str:
    return "; ".join(" ".join([name, *values]) for name, values in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.header = policy_header(getattr(settings, "SECURE_CSP", {}))

    def __call__(self, request):
        response = self.get_response(request)
        if self.header and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.header
        return response
