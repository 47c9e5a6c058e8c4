"""The web server command `make run`, the test stack and the benchmarks share."""

from __future__ import annotations

from orchestrator import servers


def workers_in(command: list[str]) -> int:
    return int(command[command.index("--workers") + 1])


def test_postgresql_gets_two_web_processes_and_the_embedded_sqlite_one():
    pg = {"DATABASE_URL": "postgres://127.0.0.1:5432/signalbox"}
    assert servers.web_workers(pg) == 2
    assert servers.web_workers({}) == 1  # SQLite: one writer; a second process only waits
    assert servers.web_workers({"DATABASE_URL": ""}) == 1
    assert workers_in(servers.web_command("/venv/bin/python", host="h", port=1, env={})) == 1
    assert workers_in(servers.web_command("/venv/bin/python", host="h", port=1, env=pg)) == 2


def test_the_setting_wins_on_either_database():
    assert servers.web_workers({"SIGNALBOX_WEB_WORKERS": "3"}) == 3
    assert servers.web_workers({"SIGNALBOX_WEB_WORKERS": "4", "DATABASE_URL": "postgres://x"}) == 4
    assert servers.web_workers({"SIGNALBOX_WEB_WORKERS": "0"}) == 1
    explicit = servers.web_command("/venv/bin/python", host="h", port=1, workers=5, env={})
    assert workers_in(explicit) == 5
