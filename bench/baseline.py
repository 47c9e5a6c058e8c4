"""The benchmark's baseline: the same server and middleware answering 202 without storing.

Mounted at /bench/baseline only when SIGNALBOX_BENCH_BASELINE=1 (the benchmark's own stack
sets it; see orchestrator/urls.py). What ingest costs is its time minus this one's.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def baseline(request):
    # Read the body, as ingest must, and answer like ingest does; store nothing.
    return JsonResponse({"accepted": len(request.body)}, status=202)
