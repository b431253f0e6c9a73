"""The admin of ``HardenedSession`` in a browser: the changelist and a change page
render for the superuser, without keys or values, and "Revoke selected sessions" ends
a session (docs/operations.rst: admin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.browser.conftest import (
    USERS,
    DemoSite,
    expect,
    key_hash,
    log_in,
    logged_in_as,
    session_cookie,
)

CHANGELIST = "/admin/hardened_sessions/hardenedsession/"


def admin_log_in(page: Any, site: DemoSite) -> None:
    page.goto(site("/admin/"))
    page.fill("#id_username", "admin")
    page.fill("#id_password", USERS["admin"])
    page.click("input[type=submit]")
    page.wait_for_url(site("/admin/"))


def test_admin_shows_sessions_and_revokes_one(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    victim = new_context()
    victim_page = victim.new_page()
    log_in(victim_page, demo_site, "demo")
    victim_cookie = session_cookie(victim)
    assert victim_cookie is not None
    victim_hash = key_hash(victim_cookie["value"])

    admin = new_context()
    page = admin.new_page()
    admin_log_in(page, demo_site)

    response = page.goto(demo_site(CHANGELIST))
    assert response is not None and response.status == 200
    checkbox = page.locator(f"input[name=_selected_action][value='{victim_hash[:16]}']")
    expect(checkbox).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(f"{victim_hash[:16]}…")
    assert victim_cookie["value"] not in page.content()
    shot(page, "changelist")

    response = page.goto(demo_site(f"{CHANGELIST}{victim_hash[:16]}/change/"))
    assert response is not None and response.status == 200
    summary = page.locator(".field-data_summary")
    expect(summary).to_contain_text("_auth_user_id")
    expect(summary).to_contain_text("string, ")
    expect(page.locator(".field-user_display")).to_contain_text("demo")
    assert victim_cookie["value"] not in page.content()
    shot(page, "change-page")

    page.goto(demo_site(CHANGELIST))
    page.locator(f"input[name=_selected_action][value='{victim_hash[:16]}']").check()
    page.select_option("select[name=action]", "revoke_selected")
    page.click("button[name=index]")
    expect(page.locator("ul.messagelist")).to_contain_text("1 session revoked.")
    expect(page.locator(f"input[name=_selected_action][value='{victim_hash[:16]}']")).to_have_count(
        0
    )
    shot(page, "after-revoke")

    assert logged_in_as(victim_page, demo_site) is None
    shot(victim_page, "revoked-browser-after-reload")
    # The admin's own session goes on.
    response = page.goto(demo_site(CHANGELIST))
    assert response is not None and response.status == 200
    assert page.url == demo_site(CHANGELIST)


def test_admin_on_the_cache_engine_finds_a_user_and_revokes_a_session(
    start_demo_site: Callable[..., Any],
    new_context: Callable[..., Any],
    shot: Callable[..., Any],
) -> None:
    """On the cache engine the admin lists a searched user's live sessions (through the
    per-user index), says that anonymous sessions are not listed, and "Revoke" ends the
    session through the engine and says so."""
    with start_demo_site(HS_BROWSER_SESSION_CACHE="locmem") as site:
        victim = new_context()
        victim_page = victim.new_page()
        log_in(victim_page, site, "demo")
        victim_cookie = session_cookie(victim)
        assert victim_cookie is not None
        victim_hash = key_hash(victim_cookie["value"])

        admin = new_context()
        page = admin.new_page()
        admin_log_in(page, site)
        response = page.goto(site(CHANGELIST))
        assert response is not None and response.status == 200
        expect(page.locator("#engine-notice")).to_contain_text("Anonymous sessions are not listed")
        expect(page.locator("#result_list")).to_have_count(0)

        page.fill("#searchbar", "demo")
        page.click("#changelist-search input[type=submit]")
        row = page.locator(f"tr[data-row-id='{victim_hash[:16]}']")
        expect(row).to_have_count(1)
        expect(row).to_contain_text(f"{victim_hash[:16]}…")
        assert victim_cookie["value"] not in page.content()
        assert victim_hash not in page.content()
        shot(page, "cache-engine-search")

        row.locator("button[type=submit]").click()
        expect(page.locator("ul.messagelist")).to_contain_text("1 session of demo revoked.")
        expect(page.locator(f"tr[data-row-id='{victim_hash[:16]}']")).to_have_count(0)
        shot(page, "cache-engine-after-revoke")

        assert logged_in_as(victim_page, site) is None
        response = page.goto(site(CHANGELIST))
        assert response is not None and response.status == 200
