"""ChatCompletions (the aiohttp chat-completions pool) against the real mock server."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.llm.pool import ModelPool
from app.llm.upstream import ChatCompletions, ReplyTooLarge, _retryable, retry_after_seconds
from tests.conftest import MockLLM, SettingsFactory, pool_for
from tests.servers.processes import free_port, start_mock_openai


@pytest.fixture
async def pools() -> AsyncIterator[list[ChatCompletions]]:
    made: list[ChatCompletions] = []
    yield made
    for pool in made:
        await pool.aclose()


def payload(text: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": text}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def streamed_text(pool: ChatCompletions, text: str) -> str:
    parts: list[str] = []
    async with pool.stream(payload(text, stream=True)) as chunks:
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


async def test_whole_and_streamed_calls_share_one_kept_alive_connection(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    pool = pool_for(mock_llm.base_url)
    pools.append(pool)
    for _ in range(3):
        assert await streamed_text(pool, "[[tokens:5]]") == "tok0 tok1 tok2 tok3 tok4"
        data = await pool.create(payload("hello"))
        assert data["choices"][0]["message"]["content"] == "mock reply to: hello (saw 1 messages)"
    ports = {r["client_port"] for r in mock_llm.requests()}
    # Reading each stream to its end (past [DONE]) returns the connection to the pool.
    assert len(ports) == 1, ports
    assert await pool.list_models(timeout_s=2) == 200


async def test_an_abandoned_stream_costs_its_connection_only(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    pool = pool_for(mock_llm.base_url)
    pools.append(pool)
    async with pool.stream(payload("[[tokens:200]] [[slow:5]]", stream=True)) as chunks:
        async for _ in chunks:
            break
    assert await streamed_text(pool, "[[tokens:3]]") == "tok0 tok1 tok2"
    first, second = (r["client_port"] for r in mock_llm.requests()[-2:])
    assert first != second


@pytest.mark.parametrize("stream", [False, True])
async def test_retries_like_the_sdk_then_gives_up(
    mock_llm: MockLLM, pools: list[ChatCompletions], stream: bool
) -> None:
    patient = pool_for(mock_llm.base_url, max_retries=2)
    hasty = pool_for(mock_llm.base_url, max_retries=1)
    pools.extend([patient, hasty])
    text = f"[[flaky:2]] {uuid.uuid4().hex} [[tokens:2]]"
    before = mock_llm.count()
    if stream:
        assert await streamed_text(patient, text) == "tok0 tok1"
    else:
        assert (await patient.create(payload(text)))["choices"][0]["message"]["content"]
    assert mock_llm.count() - before == 3  # two 503s, then the answer

    text = f"[[flaky:2]] {uuid.uuid4().hex}"
    before = mock_llm.count()
    with pytest.raises(openai.InternalServerError, match="mock flaky failure") as caught:
        if stream:
            await streamed_text(hasty, text)
        else:
            await hasty.create(payload(text))
    assert caught.value.status_code == 503
    assert mock_llm.count() - before == 2


async def test_client_errors_are_not_retried(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    pool = pool_for(mock_llm.base_url, max_retries=3)
    pools.append(pool)
    before = mock_llm.count()
    with pytest.raises(openai.RateLimitError):
        # 429 is retried (three times), then raised with the SDK's class
        await pool.create(payload("[[fail:429]]"))
    assert mock_llm.count() - before == 4
    wrong_path = pool_for(mock_llm.base_url + "/nowhere", max_retries=3)
    pools.append(wrong_path)
    with pytest.raises(openai.NotFoundError):
        await wrong_path.create(payload("hi"))


async def test_unreachable_and_hanging_upstreams(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    nobody = pool_for(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    hurried = pool_for(mock_llm.base_url, read_timeout_s=0.3)
    pools.extend([nobody, hurried])
    with pytest.raises(openai.APIConnectionError, match="unreachable"):
        await nobody.create(payload("hi"))
    with pytest.raises(openai.APIConnectionError):
        await streamed_text(nobody, "hi")
    with pytest.raises(openai.APITimeoutError):
        await hurried.create(payload("[[fail:hang]]"))
    with pytest.raises(openai.APIConnectionError, match="interrupted"):
        await streamed_text(hurried, "[[fail:drop]] [[tokens:10]]")
    with pytest.raises(openai.APIError, match="mid-stream"):
        await streamed_text(hurried, "[[fail:sse_error]] [[tokens:10]]")


def status_error(status: int, **headers: str) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers,
                              request=httpx2.Request("POST", "http://x/v1/chat/completions"))
    return openai.APIStatusError("e", response=response, body=None)


def test_retry_decisions_follow_the_sdk() -> None:
    assert _retryable(status_error(500)) and _retryable(status_error(429))
    assert _retryable(status_error(408)) and _retryable(status_error(409))
    assert not _retryable(status_error(400)) and not _retryable(status_error(401))
    assert not _retryable(status_error(500, **{"x-should-retry": "false"}))
    assert _retryable(status_error(400, **{"x-should-retry": "true"}))
    request = httpx2.Request("POST", "http://x")
    assert _retryable(openai.APITimeoutError(request=request))
    assert _retryable(openai.APIConnectionError(request=request))
    assert retry_after_seconds(httpx2.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(httpx2.Headers({"retry-after": "3"})) == 3.0
    assert retry_after_seconds(httpx2.Headers({"retry-after": "600"})) is None  # too long: backoff
    assert retry_after_seconds(httpx2.Headers({"retry-after": "soon"})) is None


def test_the_environment_proxy_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = pool_for("https://api.example.com/v1")
    assert proxied._proxy == "http://proxy.internal:3128"
    assert proxied._proxy_auth is not None and proxied._proxy_auth.login == "user"
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert pool_for("https://api.example.com/v1")._proxy is None


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agenthost test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_upstream_verified_against_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: list[ChatCompletions]
) -> None:
    cert, key = self_signed(tmp_path)
    server = start_mock_openai(None, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        base_url = f"https://127.0.0.1:{server.port}/v1"
        untrusting = pool_for(base_url)  # certifi's CAs do not know this certificate
        pools.append(untrusting)
        with pytest.raises(openai.APIConnectionError, match=r"(?i)certificate"):
            await untrusting.create(payload("hi"))
        trusting = pool_for(base_url, cafile=str(cert))
        pools.append(trusting)
        assert await streamed_text(trusting, "[[tokens:3]]") == "tok0 tok1 tok2"
        data = await trusting.create(payload("over tls"))
        assert data["choices"][0]["message"]["content"].startswith("mock reply to: over tls")
    finally:
        server.stop()


async def test_a_stream_that_stalls_mid_way_times_out(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    hurried = pool_for(mock_llm.base_url, read_timeout_s=0.3)
    pools.append(hurried)
    with pytest.raises(openai.APITimeoutError):
        await streamed_text(hurried, "[[tokens:3]] [[slow:1000]]")
    # the pool still works afterwards
    assert await streamed_text(hurried, "[[tokens:2]]") == "tok0 tok1"


async def test_the_organization_setting_is_sent(
    make_settings: SettingsFactory, mock_llm: MockLLM
) -> None:
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             openai_org_id="org-agenthost")
    models = ModelPool(settings)
    try:
        reply = await models.get("gpt-4o-mini").ainvoke("hello")
        assert reply.text.startswith("mock reply to: hello")
        assert mock_llm.requests()[-1]["organization"] == "org-agenthost"
    finally:
        await models.aclose()


async def test_a_stream_ending_without_done_is_complete(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    pool = pool_for(mock_llm.base_url)
    pools.append(pool)
    text = await streamed_text(pool, "[[tokens:4]] [[fail:nodone]]")
    assert text == "tok0 tok1 tok2 tok3"


@pytest.mark.parametrize(("trigger", "stream", "reason"), [
    ("[[fail:badjson]]", False, "the response was not JSON"),
    ("[[fail:badchunk]]", True, "a streamed chunk was not JSON"),
    ("[[fail:longline]]", True, "a streamed line exceeded 4 MiB"),
])
async def test_malformed_upstream_answers_are_connection_errors(
    mock_llm: MockLLM, pools: list[ChatCompletions], trigger: str, stream: bool, reason: str
) -> None:
    pool = pool_for(mock_llm.base_url)
    pools.append(pool)
    with pytest.raises(openai.APIConnectionError, match=reason):
        if stream:
            await streamed_text(pool, trigger)
        else:
            await pool.create(payload(trigger))
    assert await streamed_text(pool, "[[tokens:2]]") == "tok0 tok1"  # the pool still works


async def test_a_reply_over_the_cap_fails_whole_or_streamed(
    mock_llm: MockLLM, pools: list[ChatCompletions]
) -> None:
    pool = pool_for(mock_llm.base_url, max_reply_chars=16 * 1024, max_retries=2)
    pools.append(pool)
    fits = "[[tokens:10]] [[tokensize:1000]]"
    too_big = "[[tokens:100]] [[tokensize:1000]]"  # over the cap and the envelope
    assert len((await pool.create(payload(fits)))["choices"][0]["message"]["content"]) > 10_000
    assert len(await streamed_text(pool, fits)) > 10_000
    before = mock_llm.count()
    with pytest.raises(ReplyTooLarge, match="AGENTHOST_LLM_MAX_REPLY_KB"):
        await pool.create(payload(too_big))
    with pytest.raises(ReplyTooLarge, match="characters streamed; at most 16 KiB"):
        await streamed_text(pool, too_big)
    assert mock_llm.count() - before == 2  # not retried: the same reply would come again


async def test_a_chunked_body_over_the_cap_is_cut_while_it_is_read(
    pools: list[ChatCompletions]
) -> None:
    """No Content-Length: the body is counted as it arrives, and reading stops at the cap."""
    sent = {"bytes": 0}

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"choices": [{"message": {"content": "')
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 12.8 MB if nobody stopped it
                await response.write(b"x" * 64 * 1024)
                sent["bytes"] += 64 * 1024
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        pool = pool_for(f"http://127.0.0.1:{port}/v1", max_reply_chars=256 * 1024)
        pools.append(pool)
        with pytest.raises(ReplyTooLarge, match="body over"):
            await pool.create(payload("hi"))
    finally:
        await runner.cleanup()
    assert sent["bytes"] < 12 * 1024 * 1024
