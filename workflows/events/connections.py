"""Named broker connections: configured by the `connectors` command and the API, read by
the connector threads of the bus consumer (workflows/events/connectors/runner.py).

The password is never stored on the connection nor shown back: `password_secret` names a
Secret (workflows/access/secrets.py), decrypted only by the process that connects.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.utils import timezone

from workflows.access.models import Secret
from workflows.access.secrets import secret_values
from workflows.events.connectors.base import ConnectionConfig, InvalidConnection
from workflows.events.connectors.registry import all_kinds
from workflows.events.models import Connection

STATES = ("idle", "connecting", "connected", "reconnecting")
# What the API and the command may set; the health fields are the runner's.
SETTABLE = ("kind", "url", "username", "password_secret", "options", "default_type", "enabled")


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    kinds = all_kinds()
    kind = fields.get("kind")
    if kind not in kinds:
        raise InvalidConnection(f"kind must be one of: {', '.join(sorted(kinds))}")
    connector = kinds[kind]
    url = fields.get("url") or ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidConnection(f"invalid URL: {exc}") from exc
    if parts.scheme not in (connector.scheme, connector.scheme + "s") or not parts.hostname:
        raise InvalidConnection(f"a {kind} URL looks like {connector.scheme}://host:port")
    if parts.password:
        raise InvalidConnection(
            "the URL must not hold a password: store it as a secret and name it in password_secret"
        )
    secret = fields.get("password_secret") or ""
    if secret and not Secret.objects.filter(name=secret).exists():
        raise InvalidConnection(f"no secret named {secret!r} (create it first)")
    options = fields.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidConnection("options is a JSON object")
    fields["options"] = connector.check_options(options)
    for name in ("username", "default_type"):
        if not isinstance(fields.get(name, ""), str):
            raise InvalidConnection(f"{name} is a string")
    if not isinstance(fields.get("enabled", True), bool):
        raise InvalidConnection("enabled is true or false")
    return fields


def add_connection(*, name: str, **fields: Any) -> Connection:
    """Create a connection; raises InvalidConnection. The bus consumer starts reading it
    within a couple of seconds."""
    try:
        validate_slug(name)
    except ValidationError as exc:
        raise InvalidConnection(
            f"{name!r}: a name is letters, digits, hyphens or underscores"
        ) from exc
    unknown = sorted(set(fields) - set(SETTABLE))
    if unknown:
        raise InvalidConnection(f"unknown field {unknown[0]!r}")
    if Connection.objects.filter(name=name).exists():
        raise InvalidConnection(f"a connection named {name!r} already exists")
    return Connection.objects.create(name=name, **_checked(dict(fields)))


def update_connection(*, name: str, **changes: Any) -> Connection:
    connection = get_connection(name=name)
    unknown = sorted(set(changes) - set(SETTABLE))
    if unknown:
        raise InvalidConnection(f"unknown field {unknown[0]!r}")
    fields = {f: getattr(connection, f) for f in SETTABLE} | changes
    for field, value in _checked(fields).items():
        setattr(connection, field, value)
    connection.save()
    return connection


def get_connection(*, name: str) -> Connection:
    connection = Connection.objects.filter(name=name).first()
    if connection is None:
        raise Connection.DoesNotExist(f"no connection named {name!r}")
    return connection


def remove_connection(*, name: str) -> None:
    if not Connection.objects.filter(name=name).delete()[0]:
        raise Connection.DoesNotExist(f"no connection named {name!r}")


def enabled_configs() -> list[ConnectionConfig]:
    """Snapshots of the enabled connections, with their passwords, for the runner."""
    rows = list(Connection.objects.filter(enabled=True).order_by("name"))
    passwords = secret_values(names=[r.password_secret for r in rows if r.password_secret])
    return [
        ConnectionConfig(
            name=r.name,
            kind=r.kind,
            url=r.url,
            username=r.username,
            password=passwords.get(r.password_secret, ""),
            options=r.options,
            default_type=r.default_type,
        )
        for r in rows
    ]


def record_state(*, name: str, state: str, error: str = "") -> None:
    """Record a connector's health; an error is kept as the last one until the next."""
    now = timezone.now()
    changes: dict[str, Any] = {"state": state, "state_changed_at": now}
    if error:
        changes |= {"last_error": error[:2000], "last_error_at": now}
    Connection.objects.filter(name=name).update(**changes)


def describe(connection: Connection) -> dict[str, Any]:
    """What the API and the command show: everything but a password (there is none here)."""
    return {
        "name": connection.name,
        "kind": connection.kind,
        "url": connection.url,
        "username": connection.username,
        "password_secret": connection.password_secret,
        "options": connection.options,
        "default_type": connection.default_type,
        "enabled": connection.enabled,
        "health": {
            "state": connection.state if connection.enabled else "disabled",
            "since": connection.state_changed_at,
            "last_error": connection.last_error,
            "last_error_at": connection.last_error_at,
        },
    }


def connection_health() -> list[dict[str, Any]]:
    """Every connection as `describe` shows it, by name (the workers page lists them)."""
    return [describe(c) for c in Connection.objects.order_by("name")]
