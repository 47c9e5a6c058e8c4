"""http_request's error codes, which retry policies match: an error answer's code by prefix, a
request that cannot be made, a huge answer read up to the limit, retry_on.

"By hand" runs go through the real services (ingest, match, execute_step, record_result) in
this process, without the bus or a worker: each queued attempt is executed by the test
(tests/steps_by_hand.py).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from tests.factories import cloudevent, definition
from tests.http_recorder import Reply
from tests.steps_by_hand import context
from workflows.core.definition import RetryPolicy
from workflows.steps.base import StepError
from workflows.steps.http_request import MAX_BODY_BYTES, HttpRequest


def http_error(url: str, **config) -> StepError:
    with pytest.raises(StepError) as caught:
        HttpRequest().execute({"url": url, **config}, context())
    return caught.value


@pytest.fixture
def quiet_circuit(recorder):
    """Closed circuit for the recorder's host before and after (ports get reused)."""
    from workflows.infra import circuit

    circuit.reset(circuit.host_of(recorder.url))
    yield
    circuit.reset(circuit.host_of(recorder.url))


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (500, "http.500", True),
        (503, "http.503", True),
        (429, "http.429", True),
        (404, "http.404", False),
        (409, "http.409", False),
    ],
)
def test_an_http_error_answer_has_a_code_retry_policies_match_by_prefix(
    recorder, quiet_circuit, status, code, retryable
):
    recorder.answer(Reply(status=status))

    error = http_error(recorder.url)

    assert (error.code, error.retryable) == (code, retryable)
    assert RetryPolicy(retry_on=("http.5",)).retries(
        retryable=error.retryable, code=error.code
    ) is code.startswith("http.5")
    assert RetryPolicy(retry_on=("http.429", "network")).retries(
        retryable=error.retryable, code=error.code
    ) is (status == 429)


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("refused", "outbound_refused"),
        ("redirect-loop", "redirects"),
        ("redirect-ftp", "redirects"),
        ("http://[::1/", "invalid_url"),
        ("http:///no-host", "invalid_url"),
    ],
)
def test_a_request_that_cannot_be_made_has_a_code_and_is_not_retried(
    recorder, quiet_circuit, setup, code
):
    url = recorder.url
    if setup == "refused":
        url = "http://169.254.169.254/latest/meta-data/"
    elif setup == "redirect-loop":
        recorder.default = Reply(status=302, headers={"Location": recorder.url + "/again"})
    elif setup == "redirect-ftp":
        recorder.answer(Reply(status=302, headers={"Location": "ftp://example.com/file"}))
    else:
        url = setup

    error = http_error(url, method="GET")

    assert (error.code, error.retryable) == (code, False)


def test_a_huge_answer_is_read_only_up_to_the_limit(recorder, quiet_circuit):
    recorder.answer(Reply(status=200, body="z" * (MAX_BODY_BYTES + 500_000)))

    output = HttpRequest().execute({"url": recorder.url, "method": "GET"}, context())

    assert isinstance(output["body"], str) and len(output["body"]) == MAX_BODY_BYTES


def test_a_retry_policy_with_retry_on_retries_only_the_matching_codes(
    by_hand, recorder, quiet_circuit
):
    recorder.answer(Reply(status=503), Reply(status=404))
    body = definition(
        {
            "id": "call",
            "kind": "http_request",
            "config": {"url": recorder.url},
            "retry": {"max_attempts": 5, "delay_seconds": 0, "retry_on": ["http.5"]},
        }
    )

    run = by_hand.start("selective", body, cloudevent())
    by_hand.drain()
    # The 503 was retried (a due retry is enqueued by the scheduler's sweep: run it by hand).
    from workflows.runs.sweeps import enqueue_due_steps

    with transaction.atomic():
        enqueue_due_steps(now=timezone.now() + timedelta(seconds=5))
    by_hand.drain()
    run.refresh_from_db()

    codes = list(run.steps.order_by("attempt").values_list("error_code", flat=True))
    assert codes == ["http.503", "http.404"]
    assert run.status == "failed" and len(recorder.requests) == 2
