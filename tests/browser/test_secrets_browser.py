"""The Secrets page in a real browser: an admin creates, rotates and deletes a secret
through the htmx forms, without a page load, and never sees a value again."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import log_in, marker_survived, set_marker
from tests.waiting import wait_until

VALUE = "sk_live_browser_0123456789abcdef"


@pytest.mark.browser
def test_an_admin_creates_rotates_and_deletes_a_secret_in_place(page: Page, make_user):
    from workflows.models import AuditEntry, Secret
    from workflows.services.secrets import secret_values

    log_in(page, make_user("admin").username)
    page.get_by_role("link", name="Secrets").click()
    expect(page.get_by_role("heading", name="Secrets")).to_be_visible()
    set_marker(page)

    form = page.locator("#new-secret-form")
    form.get_by_label("Name").fill("browser_key")
    form.get_by_label("Value").fill(VALUE)
    form.get_by_role("button", name="Create secret").click()

    row = page.locator("#secret-browser_key")
    expect(row).to_contain_text("sk_l…")
    expect(page.locator("#secrets-notice")).to_have_text("Secret browser_key created.")
    assert VALUE not in page.content()
    assert secret_values(names=["browser_key"]) == {"browser_key": VALUE}

    row.get_by_label("new value of browser_key").fill("rotated-in-the-browser-42")
    row.get_by_role("button", name="Rotate").click()
    expect(page.locator("#secrets-notice")).to_have_text("Secret browser_key rotated.")
    expect(page.locator("#secret-browser_key")).to_contain_text("rota…")
    assert "rotated-in-the-browser-42" not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#secret-browser_key").get_by_role("button", name="Delete").click()
    expect(page.locator("#secrets-notice")).to_have_text("Secret browser_key deleted.")
    expect(page.locator("#secret-browser_key")).to_have_count(0)

    assert marker_survived(page)  # swapped in place by htmx, no page load
    wait_until(lambda: not Secret.objects.exists(), timeout=5, message="the secret deleted")
    actions = list(
        AuditEntry.objects.filter(target_type="secret")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["secret.create", "secret.rotate", "secret.delete"]


@pytest.mark.browser
def test_a_bad_name_shows_a_form_error_in_place(page: Page, make_user):
    log_in(page, make_user("admin").username)
    page.goto("/secrets/")
    set_marker(page)

    form = page.locator("#new-secret-form")
    form.get_by_label("Name").fill("not a name")
    form.get_by_label("Value").fill(VALUE)
    form.get_by_role("button", name="Create secret").click()

    expect(page.locator("#new-secret-name-error")).to_contain_text("a secret name is")
    expect(page.locator("#new-secret-form").get_by_label("Value")).to_have_value("")
    assert marker_survived(page)
