"""GET /api/v1/openapi.json: the API's OpenAPI 3.1 description, kept by hand in openapi.yaml
beside the views (tests/test_openapi.py checks it against the URL conf and the live server)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.api.auth import token_required

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@functools.cache
def description() -> dict[str, Any]:
    """The document, read once per process (it changes only with the code)."""
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


@require_http_methods(["GET"])
@token_required("viewer")
def openapi_json(request):
    return JsonResponse(description())
