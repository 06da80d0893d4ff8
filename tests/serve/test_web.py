"""The web chat page at /, driven in headless Chromium (Debian's /usr/bin/chromium, never a
downloaded browser) against the live server: a message sent from the page comes back streamed."""

import os

import httpx2
import pytest

from .conftest import API_KEY, wait_idle

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does) to "
                    "test the web chat page")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def test_the_page_is_served_whole_from_the_package_with_nothing_from_elsewhere(server):
    page = httpx2.get(server[0] + "/")      # a browser cannot send the key on navigation
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "http" not in page.text.replace("http-equiv", "")     # no CDN, no external link
    for asset in ("/web/chat.js", "/web/chat.css"):
        assert httpx2.get(server[0] + asset).status_code == 200


@pytest.mark.slow
def test_a_message_sent_from_the_page_gets_a_streamed_reply(server, browser, smollm2_llm):
    system, question = "You are a geography teacher.", "What is the capital of France?"
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server[0] + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#model:has-text('smollm2')")
    page.fill("#system", system)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "32")
    page.fill("#input", question)
    page.click("#send")
    page.wait_for_selector("#stop:not([disabled])")            # streaming: the stop button is live
    reply = page.wait_for_selector("li.assistant[data-done='true']", timeout=60_000)
    expected = smollm2_llm.chat([{"role": "system", "content": system},
                                 {"role": "user", "content": question}], temperature=0, max_new_tokens=32)
    assert reply.text_content() == expected and expected
    assert int(reply.get_attribute("data-chunks")) > 3          # it arrived in pieces
    assert page.locator("li.user").text_content() == question
    assert page.is_disabled("#stop") and not page.is_visible("#error")
    assert all(u.startswith(server[0]) for u in requests)       # nothing fetched from elsewhere
    page.close()


@pytest.mark.slow
def test_the_stop_button_ends_a_reply_and_the_server_drops_it(server, browser):
    before = wait_idle(server[0])
    page = browser.new_page()
    page.goto(server[0] + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#model:has-text('smollm2')")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "400")
    page.fill("#input", "Write a long story about a llama.")
    page.click("#send")
    page.wait_for_function("() => Number(document.querySelector('li.assistant')?.dataset.chunks) >= 3")
    page.click("#stop")
    reply = page.wait_for_selector("li.assistant[data-done='true']")
    assert 3 <= int(reply.get_attribute("data-chunks")) < 100
    assert not page.is_visible("#error")
    page.close()
    after = wait_idle(server[0])
    assert after["lamina_requests_aborted_total"] == before["lamina_requests_aborted_total"] + 1
    assert after["lamina_generation_tokens_total"] - before["lamina_generation_tokens_total"] < 100
