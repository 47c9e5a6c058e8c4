"""The circuit breaker per outbound host: its states, its sharing through Redis, what the
http_request step does with it, and where operators see it (API and CLI).

Time is a fake clock (`circuit.clock`), so cool-downs pass without sleeping."""

from __future__ import annotations

import io
import multiprocessing
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.core.management import CommandError, call_command

from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent, definition, http_step
from tests.http_recorder import Reply
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.infra import circuit
from workflows.steps.base import StepContext, StepError
from workflows.steps.http_request import HttpRequest

THRESHOLD, COOLDOWN = 3, 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(circuit, "clock", fake)
    return fake


@pytest.fixture
def breaker(settings, clock):
    """Thresholds for these tests, and a host name no other test uses; forgotten after."""
    settings.SIGNALBOX_CIRCUIT_FAILURES = THRESHOLD
    settings.SIGNALBOX_CIRCUIT_COOLDOWN = COOLDOWN
    hosts: list[str] = []

    def new_host() -> str:
        hosts.append(f"h-{uuid.uuid4().hex[:10]}.example:443")
        return hosts[-1]

    yield new_host
    for host in hosts:
        circuit.reset(host)


def fail(host: str, times: int = 1, code: str = "http.503") -> None:
    for _ in range(times):
        circuit.failed(circuit.acquire(host), code)


def context(**overrides) -> StepContext:
    values = {
        "run_id": 3,
        "step_id": "call",
        "attempt": 1,
        "idempotency_key": "sb-circuit-1",
        "event": {"data": {}},
        "steps": {},
        "outbound_allow": ("127.0.0.1/32",),
    }
    values.update(overrides)
    return StepContext(**values)


def call(url: str, **config):
    return HttpRequest().execute({"url": url, **config}, context())


def error_of(url: str, **config) -> StepError:
    with pytest.raises(StepError) as caught:
        call(url, **config)
    return caught.value


# --- the states ---------------------------------------------------------------------------------
def test_a_host_is_closed_until_the_failures_reach_the_threshold(breaker):
    host = breaker()
    fail(host, THRESHOLD - 1)

    permit = circuit.acquire(host)

    assert permit.probe is False
    state = circuit.status(host)
    assert (state.state, state.failures, state.opened_at) == ("closed", THRESHOLD - 1, None)
    assert state.last_error == "http.503"


def test_consecutive_failures_open_the_circuit_which_then_fails_fast(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(10)

    with pytest.raises(circuit.CircuitOpen) as caught:
        circuit.acquire(host)

    assert caught.value.retry_after == pytest.approx(COOLDOWN - 10)
    assert caught.value.half_open is False
    assert host in str(caught.value)
    state = circuit.status(host)
    assert state.state == "open" and state.failures == THRESHOLD
    assert state.opened_at == clock.now - 10 and state.retry_in == pytest.approx(COOLDOWN - 10)


def test_a_success_resets_the_count_so_only_failures_in_a_row_open_it(breaker):
    host = breaker()
    fail(host, THRESHOLD - 1)
    circuit.succeeded(circuit.acquire(host))
    fail(host, THRESHOLD - 1)

    assert circuit.acquire(host).probe is False
    assert circuit.status(host).failures == THRESHOLD - 1


def test_after_the_cooldown_one_trial_request_goes_and_the_others_fail_fast(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(COOLDOWN)

    trial = circuit.acquire(host, probe_seconds=20)
    with pytest.raises(circuit.CircuitOpen) as caught:
        circuit.acquire(host)

    assert trial.probe is True
    assert caught.value.half_open is True
    assert 0 < caught.value.retry_after <= 20 + circuit.PROBE_GRACE_SECONDS
    assert circuit.status(host).state == "half_open"


def test_a_successful_trial_closes_the_circuit(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(COOLDOWN + 1)

    circuit.succeeded(circuit.acquire(host))

    state = circuit.status(host)
    assert (state.state, state.failures, state.opened_at) == ("closed", 0, None)
    assert [circuit.acquire(host).probe for _ in range(3)] == [False, False, False]


def test_a_failed_trial_opens_the_circuit_for_another_cooldown(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(COOLDOWN + 5)

    circuit.failed(circuit.acquire(host), "timeout")
    clock.advance(1)

    with pytest.raises(circuit.CircuitOpen) as caught:
        circuit.acquire(host)
    assert caught.value.retry_after == pytest.approx(COOLDOWN - 1)
    state = circuit.status(host)
    assert state.state == "open" and state.last_error == "timeout"
    assert state.opened_at == clock.now - 1


def test_a_late_success_of_a_request_sent_before_the_circuit_opened_does_not_close_it(breaker):
    host = breaker()
    early = circuit.acquire(host)
    fail(host, THRESHOLD)

    circuit.succeeded(early)

    assert circuit.status(host).state == "open"


def test_a_trial_that_never_reports_frees_the_slot_after_its_time(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(COOLDOWN)
    assert circuit.acquire(host, probe_seconds=10).probe  # its worker dies

    clock.advance(10 + circuit.PROBE_GRACE_SECONDS + 0.1)

    assert circuit.acquire(host).probe is True


def test_a_released_trial_lets_the_next_request_be_the_trial(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(COOLDOWN)

    circuit.release(circuit.acquire(host))

    assert circuit.acquire(host).probe is True


def test_each_host_and_port_has_its_own_circuit(breaker):
    host, other = breaker(), breaker()
    fail(host, THRESHOLD)

    assert circuit.acquire(other).probe is False
    assert circuit.host_of("HTTPS://API.Example.com/x") == "api.example.com:443"
    assert circuit.host_of("http://api.example.com:8080/") == "api.example.com:8080"
    assert circuit.host_of("http://[::1]/") == "[::1]:80"


# --- shared and safe under concurrency -----------------------------------------------------------
def test_of_many_workers_racing_after_the_cooldown_exactly_one_gets_the_trial(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)
    clock.advance(COOLDOWN)
    start = threading.Barrier(24)

    def race(_):
        start.wait()
        try:
            return "trial" if circuit.acquire(host).probe else "pass"
        except circuit.CircuitOpen:
            return "refused"

    with ThreadPoolExecutor(max_workers=24) as pool:
        verdicts = list(pool.map(race, range(24)))

    assert verdicts.count("trial") == 1
    assert verdicts.count("refused") == 23


def _fail_many(host: str, times: int) -> int:
    # In a forked process: its own connections to Redis, like another worker.
    from workflows.infra import redis_client

    redis_client.client.cache_clear()
    circuit._scripts.cache_clear()
    for _ in range(times):
        circuit.failed(circuit.acquire(host), "network")
    return times


def test_failures_counted_by_several_processes_at_once_are_none_lost(breaker, settings):
    settings.SIGNALBOX_CIRCUIT_FAILURES = 1000
    host = breaker()

    with multiprocessing.get_context("fork").Pool(3) as pool:
        counted = sum(pool.starmap(_fail_many, [(host, 40)] * 3))

    assert counted == 120
    assert circuit.status(host).failures == 120


def test_without_redis_the_breaker_lets_requests_through(breaker, monkeypatch, caplog):
    def down(**_kwargs):
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(circuit, "_scripts", lambda: (down, down))
    host = breaker()

    permit = circuit.acquire(host)
    circuit.failed(permit, "http.503")

    assert permit == circuit.Permit(host)
    assert "letting the request through" in caplog.text


# --- the http_request step -----------------------------------------------------------------------
@pytest.fixture
def recorded_host(breaker, recorder):
    host = circuit.host_of(recorder.url)
    circuit.reset(host)  # a port used by an earlier test may have left a history
    yield host
    circuit.reset(host)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_5xx_and_429_answers_open_the_circuit_and_then_the_host_is_not_called(
    recorder, recorded_host, status
):
    recorder.default = Reply(status=status)
    codes = [error_of(recorder.url).code for _ in range(THRESHOLD)]

    refused = error_of(recorder.url)

    assert codes == [f"http.{status}"] * THRESHOLD
    assert refused.code == "circuit_open" and refused.retryable is True
    assert refused.retry_after == pytest.approx(COOLDOWN)
    assert len(recorder.requests) == THRESHOLD


def test_4xx_answers_do_not_count_as_failures_of_the_host(recorder, recorded_host):
    recorder.default = Reply(status=404)

    codes = [error_of(recorder.url).code for _ in range(THRESHOLD + 2)]

    assert codes == ["http.404"] * (THRESHOLD + 2)
    assert len(recorder.requests) == THRESHOLD + 2
    assert circuit.status(recorded_host).state == "closed"
    assert circuit.status(recorded_host).failures == 0


def test_network_errors_count_and_open_the_circuit(breaker):
    url = f"http://127.0.0.1:{free_port()}/"
    host = circuit.host_of(url)
    try:
        codes = [error_of(url, timeout_seconds=5).code for _ in range(THRESHOLD + 1)]
    finally:
        state = circuit.status(host)
        circuit.reset(host)

    assert codes == ["network"] * THRESHOLD + ["circuit_open"]
    assert state.state == "open" and state.last_error == "network"


def test_timeouts_count_and_open_the_circuit(breaker):
    # A server that accepts connections (the kernel's backlog) and never answers.
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    host = circuit.host_of(url)
    try:
        codes = [error_of(url, timeout_seconds=0.2).code for _ in range(THRESHOLD + 1)]
    finally:
        silent.close()
        circuit.reset(host)

    assert codes == ["timeout"] * THRESHOLD + ["circuit_open"]


def test_the_trial_request_of_a_recovered_host_closes_the_circuit(recorder, recorded_host, clock):
    recorder.answer(*[Reply(status=503)] * THRESHOLD)
    for _ in range(THRESHOLD):
        error_of(recorder.url)
    assert error_of(recorder.url).code == "circuit_open"
    clock.advance(COOLDOWN)

    output = call(recorder.url)

    assert output["status"] == 200
    assert circuit.status(recorded_host).state == "closed"
    assert call(recorder.url)["status"] == 200
    assert len(recorder.requests) == THRESHOLD + 2


def test_a_failed_trial_request_keeps_the_host_failing_fast(recorder, recorded_host, clock):
    recorder.default = Reply(status=502)
    for _ in range(THRESHOLD):
        error_of(recorder.url)
    clock.advance(COOLDOWN)

    assert error_of(recorder.url).code == "http.502"  # the trial
    refused = error_of(recorder.url)

    assert refused.code == "circuit_open" and refused.retry_after == pytest.approx(COOLDOWN)
    assert len(recorder.requests) == THRESHOLD + 1


def test_a_refused_address_is_no_verdict_on_the_host(breaker, clock):
    url = "http://10.1.2.3:8080/"
    host = circuit.host_of(url)
    try:
        errors = [error_of(url, timeout_seconds=5) for _ in range(THRESHOLD + 1)]
        state = circuit.status(host)
    finally:
        circuit.reset(host)

    assert {e.code for e in errors} == {"outbound_refused"}
    assert state is None or state.failures == 0


# --- visible to operators ------------------------------------------------------------------------
def viewer_headers(role: str = "viewer") -> dict:
    _row, token = create_api_token(name=f"{role}-{uuid.uuid4().hex[:8]}", role=role)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.django_db
def test_the_api_lists_hosts_with_state_failures_and_when_they_opened(client, breaker, clock):
    broken, healthy = breaker(), breaker()
    fail(broken, THRESHOLD)
    circuit.succeeded(circuit.acquire(healthy))

    response = client.get("/api/v1/circuits", headers=viewer_headers())

    assert response.status_code == 200
    body = response.json()
    assert body["failure_threshold"] == THRESHOLD and body["cooldown_seconds"] == COOLDOWN
    rows = {row["host"]: row for row in body["circuits"]}
    assert rows[broken]["state"] == "open" and rows[broken]["failures"] == THRESHOLD
    assert rows[broken]["opened_at"] == "2027-01-15T08:00:00.000Z"
    assert rows[broken]["retry_in"] == COOLDOWN and rows[broken]["last_error"] == "http.503"
    assert rows[healthy]["state"] == "closed" and rows[healthy]["opened_at"] is None
    assert [r["host"] for r in body["circuits"]].index(broken) < [
        r["host"] for r in body["circuits"]
    ].index(healthy)


@pytest.mark.django_db
def test_the_api_needs_a_token_and_resetting_needs_the_operator_role(client, breaker):
    host = breaker()
    fail(host, THRESHOLD)

    assert client.get("/api/v1/circuits").status_code == 401
    assert (
        client.post(f"/api/v1/circuits/{host}/reset", headers=viewer_headers()).status_code == 403
    )
    reset = client.post(f"/api/v1/circuits/{host}/reset", headers=viewer_headers("operator"))
    missing = client.post(
        "/api/v1/circuits/nowhere.example:1/reset", headers=viewer_headers("operator")
    )

    assert reset.status_code == 200 and reset.json() == {"reset": [host]}
    assert circuit.status(host) is None
    assert missing.status_code == 404


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("circuits", *args, stdout=out)
    return out.getvalue()


def test_the_circuits_command_lists_hosts_and_resets_one(breaker, clock):
    host = breaker()
    fail(host, THRESHOLD)

    listed = command("list")
    also_listed = command()
    reset = command("reset", host)

    line = next(row for row in listed.splitlines() if row.startswith(host))
    assert "\topen\t" in line and f"failures {THRESHOLD}" in line and "last error http.503" in line
    assert f"after {THRESHOLD} failures in a row" in listed
    assert host in also_listed
    assert reset.strip() == f"reset circuit {host}: closed"
    assert circuit.status(host) is None


def test_resetting_an_unknown_host_names_the_known_ones(breaker):
    host = breaker()
    fail(host)

    with pytest.raises(CommandError) as caught:
        command("reset", "nowhere.example:1")

    assert "nowhere.example:1" in str(caught.value) and host in str(caught.value)


def test_a_bare_host_name_resets_all_of_its_ports(breaker):
    name = f"bare-{uuid.uuid4().hex[:8]}.example"
    for port in (80, 8080):
        fail(f"{name}:{port}")

    assert sorted(circuit.reset(name)) == [f"{name}:80", f"{name}:8080"]
    assert circuit.status(f"{name}:80") is None


# --- end to end: a worker opens it, the API process sees it ---------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_workers_failures_open_the_circuit_that_the_api_shows_and_retries_fail_fast(
    api, recorder
):
    host = circuit.host_of(recorder.url)
    circuit.reset(host)
    recorder.default = Reply(status=503)
    body = definition(
        http_step(
            "call",
            recorder.url,
            retry={
                "max_attempts": 7,
                "backoff": "fixed",
                "delay_seconds": 0.05,
                "max_delay_seconds": 0.2,
                "jitter": False,
            },
        )
    )
    assert api.put("/api/v1/workflows/breaking", json=body).status_code in (200, 201)
    assert api.post("/api/v1/workflows/breaking/publish").status_code == 201
    try:
        sent = api.post(
            "/api/v1/events",
            json=cloudevent(),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        assert sent.status_code == 202

        def finished():
            runs = api.get("/api/v1/runs", params={"workflow": "breaking"}).json()["runs"]
            return runs[0] if runs and runs[0]["status"] in ("succeeded", "failed") else None

        run = wait_until(finished, timeout=60, message="the run to give up")
        listed = api.get("/api/v1/circuits").json()["circuits"]
    finally:
        circuit.reset(host)

    assert run["status"] == "failed"
    # The stack runs with the default threshold of 5: attempts 6 and 7 never reach the host.
    assert len(recorder.requests) == 5
    assert "circuit for" in run["error"]
    mine = next(row for row in listed if row["host"] == host)
    assert mine["state"] == "open" and mine["failures"] == 5
