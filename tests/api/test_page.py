"""The chat page (GET /) in a real headless Chromium (Debian's), driven by Playwright.

The page is loaded through a TCP proxy the test can cut, so a network drop mid-reply is a
real one: the page's connection dies and it must rejoin through GET .../stream.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import SERVICE_KEY, MockLLM
from tests.servers.processes import ManagedProcess, start_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as the machine's probe starts it: no sandbox as root, no calls home on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
TOKENS = 40


class CuttableProxy:
    """A TCP proxy on a free port to ``target``; ``cut()`` drops every open connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.seen = bytearray()  # what clients sent (request heads and bodies)
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self.lock:
                        self.seen += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def serve(mock_llm: MockLLM, **env: str) -> ManagedProcess:
    return start_app({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                      "AGENTHOST_LLM_MAX_RETRIES": "0", **env})


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def test_a_message_typed_in_the_page_streams_a_reply_into_it(
    page: Page, mock_llm: MockLLM,
) -> None:
    app = serve(mock_llm)
    try:
        page.goto(f"http://127.0.0.1:{app.port}/")
        expect(page).to_have_title("agenthost chat")
        page.fill("#thread", "page-1")
        send(page, f"[[tokens:{TOKENS}]] [[slow:40]]")
        reply = page.locator(".msg.assistant")
        # tokens arrive one by one: the reply is seen part-way, still streaming
        page.wait_for_function(
            "() => { const r = document.querySelector('.msg.assistant');"
            " return r && r.textContent.includes('tok3') && !r.textContent.includes('tok39')"
            " && r.classList.contains('streaming'); }")
        expect(reply).to_have_text(" ".join(f"tok{i}" for i in range(TOKENS)))
        expect(reply).not_to_have_class("msg assistant streaming")
        # a tool call shows as it happens
        send(page, "what time is it? [[tool:current_time {}]]")
        expect(page.locator(".msg.tool").first).to_contain_text("current_time")
        expect(page.locator(".msg.assistant").last).to_contain_text(
            "tool current_time returned")
        # the history, reloaded from the service, holds the same conversation
        page.click("#load")
        expect(page.locator(".msg.user")).to_have_count(2)
        expect(page.locator(".msg.assistant").first).to_have_text(
            " ".join(f"tok{i}" for i in range(TOKENS)))
        response = httpx.get(f"http://127.0.0.1:{app.port}/")
        assert "connect-src 'self'" in response.headers["content-security-policy"]
    finally:
        app.stop()


def test_after_a_network_drop_the_page_rejoins_and_loses_no_token(
    page: Page, mock_llm: MockLLM,
) -> None:
    app = serve(mock_llm)
    proxy = CuttableProxy(app.port)
    try:
        page.goto(f"http://127.0.0.1:{proxy.port}/")
        page.fill("#thread", "page-drop")
        send(page, f"[[tokens:{TOKENS}]] [[slow:50]]")
        page.wait_for_function(
            "() => (document.querySelector('.msg.assistant') || {}).textContent"
            "?.includes('tok5')")
        proxy.cut()  # the connection streaming the reply dies mid-reply
        reply = page.locator(".msg.assistant")
        expect(reply).to_have_text(" ".join(f"tok{i}" for i in range(TOKENS)), timeout=20_000)
        expect(page.locator("#status")).to_have_text("")
        assert page.locator(".msg.error").count() == 0
        # it came back through the rejoin route, with the id of the last event it had
        sent = bytes(proxy.seen).lower()
        assert b"get /v1/tenants/demo/threads/page-drop/stream" in sent
        assert b"last-event-id: " in sent
    finally:
        proxy.close()
        app.stop()


def test_with_auth_on_the_page_sends_the_key_it_is_given(
    page: Page, mock_llm: MockLLM,
) -> None:
    app = serve(mock_llm, AGENTHOST_SERVICE_API_KEYS=SERVICE_KEY)
    try:
        page.goto(f"http://127.0.0.1:{app.port}/")  # the page itself needs no key
        page.fill("#thread", "page-auth")
        send(page, "hello")
        expect(page.locator(".msg.error")).to_contain_text("401 unauthorized")
        page.fill("#key", SERVICE_KEY)
        send(page, "hello again")
        expect(page.locator(".msg.assistant")).to_contain_text("mock reply to: hello again")
        # the key stays in the field: never stored by the page
        assert SERVICE_KEY not in page.evaluate("JSON.stringify(localStorage)")
    finally:
        app.stop()
