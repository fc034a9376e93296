"""Hostile connections, over real sockets: idle or trickling headers, a trickling body,
and more connections than a worker takes. Each is cut or refused in the error shape, and
the service goes on serving. (Before these guards each variant held its socket for good.)
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from app.connections import RESERVED_FDS, connection_cap, raise_open_file_limit
from tests.servers.processes import ManagedProcess, start_app, start_gunicorn
from tests.waiting import wait_for

PATH = "/v1/tenants/demo/threads/slow/messages"


@pytest.fixture(scope="module")
def app() -> Iterator[ManagedProcess]:
    proc = start_app({"AGENTHOST_HEADER_READ_TIMEOUT_S": "1",
                      "AGENTHOST_BODY_READ_TIMEOUT_S": "1.5"})
    yield proc
    proc.stop()


def connect(proc: ManagedProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proc.port))
    sock.settimeout(15)  # far beyond every timeout under test: a hang fails the test
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def error_of(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def served(proc: ManagedProcess) -> bool:
    return httpx.post(f"http://127.0.0.1:{proc.port}/v1/tenants/demo/threads/ok/messages",
                      json={"message": "hi"}, timeout=10).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(app: ManagedProcess) -> None:
    with connect(app) as sock:
        status, error = error_of(read_all(sock))
    assert status == 408 and error["code"] == "request_timeout"
    assert served(app)


def test_headers_trickled_a_byte_at_a_time_are_cut(app: ManagedProcess) -> None:
    request = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    with connect(app) as sock:
        cut = False
        for byte in request:  # ~0.2 s a byte: 80 bytes would take 16 s
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.2)
        raw = read_all(sock)
    assert cut or raw.startswith(b"HTTP/1.1 408")
    assert served(app)


def test_a_body_trickled_a_byte_at_a_time_is_cut_with_408(app: ManagedProcess) -> None:
    body = json.dumps({"message": "x" * 80}).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with connect(app) as sock:
        sock.sendall(head)
        answered = b""
        for byte in body:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.2)
            try:
                answered += sock.recv(65536)
            except TimeoutError:
                continue
            if answered:
                break
        sock.settimeout(15)
        raw = answered + read_all(sock)
    status, error = error_of(raw)
    assert status == 408 and error["code"] == "request_timeout"
    assert "body did not arrive within 1.5s" in error["message"]
    assert served(app)


def test_beyond_the_connection_cap_a_client_gets_503_and_the_service_recovers() -> None:
    proc = start_app({"AGENTHOST_MAX_CONNECTIONS": "10",
                      "AGENTHOST_HEADER_READ_TIMEOUT_S": "60"})
    held: list[socket.socket] = []
    try:
        held = [connect(proc) for _ in range(10)]
        with connect(proc) as extra:
            status, error = error_of(read_all(extra))
        assert status == 503 and error["code"] == "too_many_connections"
        for sock in held:
            sock.close()
        held = []
        wait_for(lambda: served(proc))  # once the service has seen the closes
    finally:
        for sock in held:
            sock.close()
        proc.stop()


def test_gunicorn_workers_have_the_guards_too() -> None:
    proc = start_gunicorn({"AGENTHOST_HEADER_READ_TIMEOUT_S": "1"})
    try:
        with connect(proc) as sock:
            status, error = error_of(read_all(sock))
        assert status == 408 and error["code"] == "request_timeout"
        assert served(proc)
    finally:
        proc.stop()


def test_the_cap_stays_below_the_open_file_limit(caplog: pytest.LogCaptureFixture) -> None:
    soft = raise_open_file_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[1] or soft >= 1 << 20
    assert connection_cap(1000, 65536) == 1000
    assert connection_cap(1000, 1024) == 1024 - RESERVED_FDS
    assert "lowered to 768" in caplog.text
