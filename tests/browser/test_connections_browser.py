"""The Connections page in a real browser: an admin adds a broker connection with the form,
sees a bad one refused with the reason, and disables and removes it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import log_in
from workflows.events.models import Connection


@pytest.mark.browser
def test_an_admin_manages_a_connection_from_the_connections_page(page: Page, make_user):
    page.goto("/login/")
    log_in(page, make_user("admin").username)
    page.goto("/connections/")

    form = page.locator("#new-connection-form")
    form.locator("input[name=name]").fill("devices")
    form.locator("select[name=kind]").select_option("mqtt")
    form.locator("input[name=url]").fill("mqtt://127.0.0.1:9")  # nothing listens there
    form.get_by_role("button", name="Add connection").click()
    expect(page.locator("#connection-error")).to_contain_text("needs the option 'topics'")

    form = page.locator("#new-connection-form")
    form.locator("input[name=options]").fill('{"topics": ["sensors/#"]}')
    form.get_by_role("button", name="Add connection").click()
    row = page.locator('tr[data-connection="devices"]')
    expect(row).to_be_visible()

    row.get_by_role("button", name="Disable").click()
    expect(page.locator('tr[data-connection="devices"]')).to_have_attribute(
        "data-state", "disabled"
    )
    page.locator('tr[data-connection="devices"]').get_by_role("button", name="Remove").click()
    expect(page.locator('tr[data-connection="devices"]')).to_have_count(0)
    assert not Connection.objects.exists()
