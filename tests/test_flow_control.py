"""Flow control end to end: every process real, every wait held in the database."""

from __future__ import annotations

import pytest

from tests.factories import cloudevent, definition, log_step
from tests.test_spine import CE_JSON, finished_run, publish, send
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def steps_by_id(run: dict) -> dict[str, dict]:
    return {s["id"]: s for s in run["steps"]}


def test_a_condition_runs_only_the_branch_it_takes_and_the_join_after_it(api):
    body = definition(
        {"id": "check", "kind": "condition", "config": {"expression": "event.data.amount > 100"}},
        log_step("big"),
        log_step("small"),
        log_step("done"),
    )
    body["edges"] = [
        {"from": "check", "to": "big", "port": "true"},
        {"from": "check", "to": "small", "port": "false"},
        {"from": "big", "to": "done"},
        {"from": "small", "to": "done"},
    ]
    publish(api, "branching", body)

    run = finished_run(api, "branching", send(api, cloudevent(data={"amount": 250})))

    steps = steps_by_id(run)
    assert run["status"] == "succeeded", run
    assert steps["check"]["port"] == "true"
    assert steps["big"]["status"] == "succeeded"
    assert steps["small"]["status"] == "skipped"
    assert steps["done"]["status"] == "succeeded"


def test_a_switch_follows_the_first_matching_case_else_default(api):
    body = definition(
        {
            "id": "route",
            "kind": "switch",
            "config": {
                "cases": [
                    {"name": "eu", "when": "event.data.region == 'eu'"},
                    {"name": "us", "when": "event.data.region == 'us'"},
                ]
            },
        },
        log_step("europe"),
        log_step("america"),
        log_step("elsewhere"),
    )
    body["edges"] = [
        {"from": "route", "to": "europe", "port": "eu"},
        {"from": "route", "to": "america", "port": "us"},
        {"from": "route", "to": "elsewhere", "port": "default"},
    ]
    publish(api, "switching", body)

    eu = steps_by_id(finished_run(api, "switching", send(api, cloudevent(data={"region": "eu"}))))
    other = steps_by_id(
        finished_run(api, "switching", send(api, cloudevent(data={"region": "jp"})))
    )

    assert (eu["europe"]["status"], eu["america"]["status"]) == ("succeeded", "skipped")
    assert (other["elsewhere"]["status"], other["europe"]["status"]) == ("succeeded", "skipped")


def test_a_filter_that_does_not_pass_stops_its_branch_quietly(api):
    publish(
        api,
        "filtering",
        definition(
            {"id": "only-paid", "kind": "filter", "config": {"expression": "event.data.paid"}},
            log_step("ship", after=("only-paid",)),
        ),
    )

    run = finished_run(api, "filtering", send(api, cloudevent(data={"paid": False})))

    assert run["status"] == "succeeded"
    assert steps_by_id(run)["ship"]["status"] == "skipped"


def test_a_failure_edge_handles_a_failed_step_and_the_run_goes_on(api):
    body = definition(
        {"id": "boom", "kind": "fail", "config": {"message": "out of stock"}},
        log_step("apologise"),
    )
    body["edges"] = [{"from": "boom", "to": "apologise", "port": "failure"}]
    publish(api, "handled", body)

    run = finished_run(api, "handled", send(api, cloudevent()))

    steps = steps_by_id(run)
    assert run["status"] == "succeeded"
    assert steps["boom"]["status"] == "failed" and "out of stock" in steps["boom"]["error"]
    assert steps["apologise"]["status"] == "succeeded"


def test_fan_out_runs_branches_in_parallel_and_a_first_join_starts_once(api):
    body = definition(
        log_step("start"),
        log_step("a", after=("start",)),
        log_step("b", after=("start",)),
        {
            "id": "first",
            "kind": "log",
            "config": {"message": "first"},
            "after": ["a", "b"],
            "join": "first",
        },
    )
    publish(api, "racing", body)

    run = finished_run(api, "racing", send(api, cloudevent()))

    assert run["status"] == "succeeded"
    assert [s["id"] for s in run["steps"]].count("first") == 1


def test_transform_builds_json_from_the_event_and_earlier_steps(api):
    publish(
        api,
        "shaping",
        definition(
            {
                "id": "shape",
                "kind": "transform",
                "config": {
                    "output": {
                        "order": "{{ event.data.order }}",
                        "label": "order #{{ event.data.order }}",
                        "double": "{{ event.data.order * 2 }}",
                    }
                },
            },
        ),
    )

    run = finished_run(api, "shaping", send(api, cloudevent(data={"order": 21})))

    assert steps_by_id(run)["shape"]["output"] == {"order": 21, "label": "order #21", "double": 42}


def test_for_each_runs_every_item_and_joins_the_results(api):
    publish(
        api,
        "looping",
        definition(
            {
                "id": "each",
                "kind": "for_each",
                "config": {
                    "items": "event.data.items",
                    "concurrency": 2,
                    "do": {"kind": "transform", "config": {"output": "{{ item * 10 }}"}},
                },
            },
        ),
    )

    run = finished_run(api, "looping", send(api, cloudevent(data={"items": [1, 2, 3, 4]})))

    assert steps_by_id(run)["each"]["output"] == {"results": [10, 20, 30, 40], "count": 4}


def test_a_delay_parks_the_run_in_the_database_and_resumes_it(api):
    publish(
        api,
        "delaying",
        definition(
            {"id": "pause", "kind": "delay", "config": {"seconds": 1}},
            log_step("after", after=("pause",)),
        ),
    )
    event_id = send(api, cloudevent())

    def waiting():
        runs = api.get("/api/v1/runs", params={"workflow": "delaying"}).json()["runs"]
        return runs and steps_by_id(runs[0]).get("pause", {}).get("status") == "waiting"

    wait_until(waiting, timeout=30, message="the delay step to wait")
    run = finished_run(api, "delaying", event_id)

    assert run["status"] == "succeeded"
    assert steps_by_id(run)["after"]["status"] == "succeeded"


def test_wait_for_event_resumes_on_the_matching_event_only(api):
    body = definition(
        {
            "id": "await-payment",
            "kind": "wait_for_event",
            "config": {
                "event": "com.example.payment.received",
                # `event` is the arriving event, `trigger` the one that started this run.
                "match": "event.data.order == trigger.data.order",
                "timeout_seconds": 60,
            },
        },
        log_step("ship"),
        log_step("cancel"),
    )
    body["edges"] = [
        {"from": "await-payment", "to": "ship", "port": "success"},
        {"from": "await-payment", "to": "cancel", "port": "timeout"},
    ]
    publish(api, "awaiting", body)
    event_id = send(api, cloudevent(data={"order": 7}))

    def waiting():
        runs = api.get("/api/v1/runs", params={"workflow": "awaiting"}).json()["runs"]
        return runs and steps_by_id(runs[0]).get("await-payment", {}).get("status") == "waiting"

    wait_until(waiting, timeout=30, message="the run to wait for the payment")
    other = cloudevent("com.example.payment.received", data={"order": 8})
    assert api.post("/api/v1/events", json=other, headers=CE_JSON).status_code == 202
    matching = cloudevent("com.example.payment.received", data={"order": 7})
    assert api.post("/api/v1/events", json=matching, headers=CE_JSON).status_code == 202

    run = finished_run(api, "awaiting", event_id)

    steps = steps_by_id(run)
    assert run["status"] == "succeeded"
    assert steps["await-payment"]["output"]["data"] == {"order": 7}
    assert (steps["ship"]["status"], steps["cancel"]["status"]) == ("succeeded", "skipped")


def test_an_event_with_data_cel_cannot_hold_neither_resumes_a_wait_nor_stops_the_next(api):
    # A 30-digit order number: the match cannot read it, so it does not match (no retries,
    # no dead letter), and the right event after it still resumes the wait.
    from workflows.events.models import DeadLetter, Event

    body = definition(
        {
            "id": "await-payment",
            "kind": "wait_for_event",
            "config": {
                "event": "com.example.payment.received",
                "match": "event.data.order == trigger.data.order",
                "timeout_seconds": 60,
            },
        },
        log_step("ship", after=("await-payment",)),
    )
    publish(api, "awaiting-poison", body)
    event_id = send(api, cloudevent(data={"order": 7}))

    def waiting():
        runs = api.get("/api/v1/runs", params={"workflow": "awaiting-poison"}).json()["runs"]
        return runs and steps_by_id(runs[0]).get("await-payment", {}).get("status") == "waiting"

    wait_until(waiting, timeout=30, message="the run to wait for the payment")
    poison = cloudevent("com.example.payment.received", data={"order": 10**30})
    assert api.post("/api/v1/events", json=poison, headers=CE_JSON).status_code == 202
    matching = cloudevent("com.example.payment.received", data={"order": 7})
    assert api.post("/api/v1/events", json=matching, headers=CE_JSON).status_code == 202

    run = finished_run(api, "awaiting-poison", event_id)

    assert run["status"] == "succeeded"
    assert steps_by_id(run)["await-payment"]["output"]["data"] == {"order": 7}
    # Settled at its first delivery: matched, not left pending for retries.
    wait_until(
        lambda: Event.objects.filter(ce_id=poison["id"], matched_at__isnull=False).exists(),
        timeout=30,
        message="the event holding a 30-digit number to be matched",
    )
    assert not DeadLetter.objects.exists()


def test_wait_for_event_takes_the_timeout_port_when_nothing_arrives(api):
    body = definition(
        {
            "id": "await",
            "kind": "wait_for_event",
            "config": {"event": "com.example.never", "timeout_seconds": 1},
        },
        log_step("ship"),
        log_step("give-up"),
    )
    body["edges"] = [
        {"from": "await", "to": "ship", "port": "success"},
        {"from": "await", "to": "give-up", "port": "timeout"},
    ]
    publish(api, "timing-out", body)

    run = finished_run(api, "timing-out", send(api, cloudevent()))

    steps = steps_by_id(run)
    assert (steps["ship"]["status"], steps["give-up"]["status"]) == ("skipped", "succeeded")


def test_a_sub_workflow_runs_as_a_child_and_returns_its_result(api):
    publish(
        api,
        "child",
        definition(
            {
                "id": "answer",
                "kind": "transform",
                "config": {"output": {"got": "{{ event.data.n }}"}},
            },
            event="com.example.unused",
        ),
    )
    publish(
        api,
        "parent",
        definition(
            {
                "id": "call",
                "kind": "sub_workflow",
                "config": {"workflow": "child", "input": {"n": "{{ event.data.n }}"}},
            },
        ),
    )

    run = finished_run(api, "parent", send(api, cloudevent(data={"n": 5})), timeout=45)

    call = steps_by_id(run)["call"]
    assert run["status"] == "succeeded", run
    assert call["output"]["status"] == "succeeded"
    assert call["output"]["output"] == {"got": 5}
    child = api.get(f"/api/v1/runs/{call['output']['run']}").json()
    assert child["parent_run"] == run["id"]


def test_cancelling_a_waiting_run_drops_its_wait_and_starts_nothing_more(api):
    publish(
        api,
        "cancellable",
        definition(
            {"id": "pause", "kind": "delay", "config": {"seconds": 600}},
            log_step("never", after=("pause",)),
        ),
    )
    send(api, cloudevent())

    def waiting_run():
        runs = api.get("/api/v1/runs", params={"workflow": "cancellable"}).json()["runs"]
        return (
            runs[0]
            if runs and steps_by_id(runs[0]).get("pause", {}).get("status") == "waiting"
            else None
        )

    run = wait_until(waiting_run, timeout=30, message="the run to wait")
    response = api.post(f"/api/v1/runs/{run['id']}/cancel", json={"reason": "changed my mind"})
    again = api.post(f"/api/v1/runs/{run['id']}/cancel")

    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert again.status_code == 409
    final = api.get(f"/api/v1/runs/{run['id']}").json()
    assert steps_by_id(final)["pause"]["status"] == "failed"
    assert "never" not in steps_by_id(final)


def test_a_concurrency_limit_queues_runs_and_starts_them_as_others_finish(api):
    body = definition({"id": "pause", "kind": "delay", "config": {"seconds": 1}})
    body["concurrency"] = {"max_runs": 1}
    publish(api, "one-at-a-time", body)
    ids = [send(api, cloudevent()) for _ in range(3)]

    def statuses():
        return [
            r["status"]
            for r in api.get("/api/v1/runs", params={"workflow": "one-at-a-time"}).json()["runs"]
        ]

    wait_until(lambda: len(statuses()) == 3, timeout=30, message="three runs")
    assert statuses().count("running") <= 1
    runs = [finished_run(api, "one-at-a-time", event_id, timeout=60) for event_id in ids]
    assert all(r["status"] == "succeeded" for r in runs)
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans


def test_runs_of_the_same_partition_key_go_one_after_another_in_arrival_order(api):
    body = definition(
        {"id": "pause", "kind": "delay", "config": {"seconds": 0.5}},
        {
            "id": "note",
            "kind": "transform",
            "config": {"output": "{{ event.data.n }}"},
            "after": ["pause"],
        },
    )
    body["concurrency"] = {"ordered": True}
    publish(api, "ordered", body)
    ids = [send(api, cloudevent(subject="customer-1", data={"n": n})) for n in range(3)]
    other = send(api, cloudevent(subject="customer-2", data={"n": 99}))

    runs = [finished_run(api, "ordered", event_id, timeout=60) for event_id in ids]
    unrelated = finished_run(api, "ordered", other, timeout=60)

    spans = [(r["started_at"], r["finished_at"]) for r in runs]
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans
    # Another key is not held up behind customer-1's queue.
    assert unrelated["started_at"] < runs[-1]["started_at"]


def test_a_workflow_with_a_manual_trigger_can_be_started_by_hand(api):
    body = definition(
        {"id": "echo", "kind": "transform", "config": {"output": "{{ event.data.who }}"}},
    )
    body["triggers"] = [{"manual": True}]
    publish(api, "by-hand", body)
    publish(api, "not-by-hand", definition(log_step("x")))

    started = api.post("/api/v1/workflows/by-hand/runs", json={"data": {"who": "ada"}})
    refused = api.post("/api/v1/workflows/not-by-hand/runs", json={"data": {}})

    assert started.status_code == 202, started.text
    assert refused.status_code == 409
    run = finished_run(api, "by-hand", started.json()["event"])
    assert steps_by_id(run)["echo"]["output"] == "ada"


def test_publishing_a_schedule_trigger_creates_its_schedule(api):
    from workflows.events.models import Schedule

    body = definition(log_step("tick"))
    body["triggers"] = [{"schedule": "*/5 * * * *", "timezone": "Europe/Paris"}]
    publish(api, "every-five", body)
    bad = definition(log_step("tick"))
    bad["triggers"] = [{"schedule": "not a cron"}]
    assert api.put("/api/v1/workflows/bad-schedule", json=bad).status_code == 201
    refused = api.post("/api/v1/workflows/bad-schedule/publish")

    schedule = Schedule.objects.get(name="wf-every-five-0")
    assert (schedule.cron, schedule.timezone) == ("*/5 * * * *", "Europe/Paris")
    assert schedule.event_type == "signalbox.schedule.every-five"
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["path"] == "/triggers/0/schedule"
