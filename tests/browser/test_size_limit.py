"""The demo's "Grow" page: a session grown past ``MAX_BYTES`` is answered 400 and the
stored session keeps what it held before (docs/design.rst, "What the engines do": save over MAX_BYTES); the
400 is the demo's ``FAILURE_VIEW`` page."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.browser.conftest import DemoSite, expect

CHUNK_KIB = 16  # the demo's MAX_BYTES is 64 KiB: the fourth chunk is too much
MAX_ATTEMPTS = 8


def chunks_shown(page: Any) -> int:
    match = re.search(r"in (\d+) filler chunks?", page.locator("main").inner_text())
    assert match, "the grow page shows no chunk count"
    return int(match.group(1))


def test_growing_past_max_bytes_answers_400_and_keeps_the_stored_session(
    demo_site: DemoSite, new_context: Callable[..., Any], shot: Callable[..., Any]
) -> None:
    page = new_context().new_page()
    page.goto(demo_site("/grow/"))
    assert chunks_shown(page) == 0

    stored = 0
    for _ in range(MAX_ATTEMPTS):
        page.fill("input[name=kib]", str(CHUNK_KIB))
        with page.expect_navigation() as navigation:
            page.click("input[type=submit][value='Add filler']")
        response = navigation.value
        if response.status == 400:
            break
        # Saved: the POST redirected back to the page, which shows one more chunk.
        assert response.status == 200
        assert response.request.redirected_from is not None
        assert chunks_shown(page) == stored + 1
        stored += 1
        if stored == 3:
            shot(page, "three-chunks")
    else:
        raise AssertionError(f"no 400 after {MAX_ATTEMPTS} chunks of {CHUNK_KIB} KiB")

    assert stored >= 1
    assert response.request.method == "POST"
    assert "The session grew larger than this site allows." in page.content()
    # Through HARDENED_SESSIONS["FAILURE_VIEW"]: a page of the site, in its layout, with a
    # way back; the status stays the middleware's.
    assert response.headers["content-type"].startswith("text/html")
    expect(page.locator("nav")).to_contain_text("Your sessions")
    expect(page.locator("h1")).to_have_text("This change was not saved")
    expect(page.locator("#failure")).to_contain_text("400")
    shot(page, "400-too-large")
    page.click("#back")
    page.wait_for_url(demo_site("/grow/"))

    page.goto(demo_site("/grow/"))
    assert chunks_shown(page) == stored
    shot(page, "after-400-session-intact")
