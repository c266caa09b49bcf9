"""The Ollama probe client: recorded replies, every failure mode against real servers, the allowlist."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from devtools.fake_ollama import FakeFleet
from registry import ollama
from registry.ollama import OllamaError, ProbeTarget, probe, probe_many

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ollama"
LOOPBACK = "127.0.0.0/8"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="module")
def fleet():
    with FakeFleet() as fleet:
        yield fleet


def target_for(fleet: FakeFleet, mode: str = "healthy", **options) -> ProbeTarget:
    options.setdefault("models", ["llama3:8b", "mistral:7b"])
    host, port = fleet.add(mode=mode, **options)
    return ProbeTarget(id=port, address=host, port=port)


# -- recorded replies ----------------------------------------------------------------------------


def test_recorded_tags_reply_parses_names_sizes_and_details():
    tags = ollama.parse_reply(fixture("tags.json"), ollama.TagsReply)
    assert [m.name for m in tags.models] == ["codellama:13b", "llama3.2:latest", "mistral:latest"]
    codellama = tags.models[0]
    assert codellama.size == 7365960935
    assert codellama.details.family == "llama"
    assert codellama.details.families is None
    assert codellama.details.parameter_size == "13B"
    assert codellama.details.quantization_level == "Q4_0"
    assert codellama.modified_at == datetime(2023, 11, 4, 21, 56, 49, 277302, tzinfo=UTC)


def test_recorded_ps_reply_parses_vram_and_expiry():
    ps = ollama.parse_reply(fixture("ps.json"), ollama.PsReply)
    (mistral,) = ps.models
    assert mistral.name == "mistral:latest"
    assert mistral.size_vram == 5137025024
    assert mistral.expires_at == datetime(2024, 6, 4, 21, 38, 31, 837530, tzinfo=UTC)


def test_recorded_version_reply_parses():
    assert ollama.parse_reply(fixture("version.json"), ollama.VersionReply).version == "0.5.1"


def test_merged_models_mark_the_loaded_one_with_its_vram_in_utc():
    tags = ollama.parse_reply(fixture("tags.json"), ollama.TagsReply)
    ps = ollama.parse_reply(fixture("ps.json"), ollama.PsReply)
    models = {m.name: m for m in ollama.merge_models(tags, ps)}
    assert models["mistral:latest"].loaded is True
    assert models["mistral:latest"].size_vram == 5137025024
    assert models["mistral:latest"].expires_at.tzinfo is UTC
    assert models["codellama:13b"].loaded is False
    assert models["codellama:13b"].size_vram is None
    assert models["codellama:13b"].quantization == "Q4_0"


def test_without_ps_every_model_is_reported_as_not_loaded():
    tags = ollama.parse_reply(fixture("tags.json"), ollama.TagsReply)
    assert not any(m.loaded for m in ollama.merge_models(tags, None))


def test_unknown_fields_are_ignored_and_null_models_read_as_none():
    reply = ollama.parse_reply(b'{"models": null, "next_release_field": 1}', ollama.TagsReply)
    assert reply.models == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"models": "x"}',
        b'{"models": [{"model": "nameless"}]}',
        b'{"models": [{"name": ""}]}',
        b'{"models": [{"name": "a", "size": "12"}]}',
        b'{"models": [{"name": 7}]}',
        b"[]",
    ],
)
def test_a_reply_of_the_wrong_shape_does_not_match_ollamas_api(body):
    with pytest.raises(OllamaError, match="reply does not match Ollama's API"):
        ollama.parse_reply(body, ollama.TagsReply)


def test_a_reply_that_is_not_json_says_so():
    with pytest.raises(OllamaError, match="reply is not valid JSON"):
        ollama.parse_reply(b"<html>502 Bad Gateway</html>", ollama.TagsReply)


# -- which addresses may be probed ---------------------------------------------------------------


def test_network_list_accepts_commas_and_spaces():
    networks = ollama.parse_networks("10.0.0.0/8, 192.168.1.0/24 fc00::/7")
    assert [str(n) for n in networks] == ["10.0.0.0/8", "192.168.1.0/24", "fc00::/7"]


@pytest.mark.parametrize("text", ["", "10.0.0.0/8,banana", "300.1.1.1/8"])
def test_network_list_with_garbage_is_refused_with_a_clear_message(text):
    with pytest.raises(ValueError, match="CIDR"):
        ollama.parse_networks(text)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.10", "::1", "fd00::5"])
def test_private_and_loopback_addresses_are_allowed_by_default(ip):
    assert ollama.address_refusal(ip, ollama.DEFAULT_ALLOWED_NETWORKS) is None


@pytest.mark.parametrize("ip", ["8.8.8.8", "2001:4860:4860::8888", "not-an-ip"])
def test_public_addresses_are_not_allowed_by_default(ip):
    assert ollama.address_refusal(ip, ollama.DEFAULT_ALLOWED_NETWORKS) == "address not allowed"


@pytest.mark.parametrize("ip", ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254", "0.0.0.0"])
def test_link_local_and_unspecified_addresses_are_refused_even_when_everything_is_allowed(ip):
    assert ollama.address_refusal(ip, "0.0.0.0/0,::/0") == "address not allowed"


def test_registration_check_refuses_literals_only_and_leaves_names_to_probe_time():
    assert ollama.literal_refusal("8.8.8.8", ollama.DEFAULT_ALLOWED_NETWORKS) == "address not allowed"
    assert ollama.literal_refusal("[fe80::1]", "::/0") == "address not allowed"
    assert ollama.literal_refusal("10.0.0.7", ollama.DEFAULT_ALLOWED_NETWORKS) is None
    assert ollama.literal_refusal("gpu-box.internal", ollama.DEFAULT_ALLOWED_NETWORKS) is None


@pytest.mark.asyncio
async def test_a_name_is_refused_when_any_of_its_addresses_is_not_allowed(monkeypatch):
    async def getaddrinfo(host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in ("10.0.0.5", "8.8.8.8")]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    result = await probe(ProbeTarget(1, "rebinding.example", 11434), timeout=2, allowed="10.0.0.0/8")
    assert (result.ok, result.error) == (False, "address not allowed")


@pytest.mark.asyncio
async def test_a_name_that_does_not_resolve_says_so(monkeypatch):
    async def getaddrinfo(host, port, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    result = await probe(ProbeTarget(1, "nowhere.example", 11434), timeout=2, allowed=LOOPBACK)
    assert result.error == "name does not resolve"


# -- the httpx seam --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_probe_connects_to_the_checked_address_and_names_the_registered_host():
    seen: list[httpx.Request] = []
    replies = {"/api/version": "version.json", "/api/tags": "tags.json", "/api/ps": "ps.json"}

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=fixture(replies[request.url.path]))

    connect = ollama.httpx_connections(httpx.MockTransport(answer))
    result = await probe(ProbeTarget(7, "localhost", 11434), timeout=2, allowed="127.0.0.0/8,::1/128", connect=connect)
    assert result.ok and result.version == "0.5.1"
    assert [r.url.path for r in seen] == ["/api/version", "/api/tags", "/api/ps"]
    assert {r.url.host for r in seen} <= {"127.0.0.1", "::1"}  # the resolved IP, never the name again
    assert {r.headers["host"] for r in seen} == {"localhost:11434"}
    assert [m.name for m in result.models if m.loaded] == ["mistral:latest"]


@pytest.mark.asyncio
async def test_probe_never_raises_even_with_a_broken_allowlist():
    result = await probe(ProbeTarget(1, "127.0.0.1", 1), timeout=1, allowed="banana")
    assert not result.ok
    assert "CIDR" in result.error


# -- a real fake fleet, every mode ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthy_endpoint_reports_version_models_and_loaded_flags(fleet):
    target = target_for(fleet, models=["llama3:8b", "mistral:7b"], loaded=["llama3:8b"])
    result = await probe(target, timeout=2, allowed=LOOPBACK)
    assert (result.ok, result.error, result.version) == (True, "", "0.5.7")
    models = {m.name: m for m in result.models}
    assert set(models) == {"llama3:8b", "mistral:7b"}
    assert models["llama3:8b"].loaded and models["llama3:8b"].size_vram == models["llama3:8b"].size
    assert models["llama3:8b"].expires_at > datetime.now(UTC)
    assert not models["mistral:7b"].loaded and models["mistral:7b"].size_vram is None
    assert len(models["mistral:7b"].digest) == 64
    assert result.latency_ms is not None and result.latency_ms < 1000
    assert result.checked_at.tzinfo is UTC


@pytest.mark.asyncio
async def test_slow_endpoint_within_the_deadline_is_healthy(fleet):
    result = await probe(target_for(fleet, "slow", delay=0.2), timeout=2, allowed=LOOPBACK)
    assert result.ok
    assert result.latency_ms >= 3 * 200 * 0.9  # each of the three calls waited


@pytest.mark.asyncio
async def test_hanging_endpoint_times_out_at_the_single_deadline(fleet):
    started = time.perf_counter()
    result = await probe(target_for(fleet, "hang"), timeout=1, allowed=LOOPBACK)
    assert (result.ok, result.error) == (False, "timed out after 1 s")
    assert 0.9 < time.perf_counter() - started < 1.5


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("http500", "HTTP 500"),
        ("invalid_json", "reply is not valid JSON"),
        ("oversized", "reply larger than 1 MiB"),
        ("redirect", "redirect refused"),
        ("refused", "connection refused"),
    ],
)
async def test_failing_endpoint_is_reported_with_a_short_sentence(fleet, mode, error):
    result = await probe(target_for(fleet, mode), timeout=2, allowed=LOOPBACK)
    assert (result.ok, result.error, result.models) == (False, error, ())


@pytest.mark.asyncio
async def test_old_ollama_without_ps_is_still_healthy_with_nothing_loaded(fleet):
    result = await probe(target_for(fleet, "no_ps", loaded=["llama3:8b"]), timeout=2, allowed=LOOPBACK)
    assert result.ok
    assert [m.loaded for m in result.models] == [False, False]


@pytest.mark.asyncio
async def test_loopback_target_is_refused_when_the_allowlist_excludes_it(fleet):
    result = await probe(target_for(fleet), timeout=2, allowed="10.0.0.0/8")
    assert (result.ok, result.error) == (False, "address not allowed")


@pytest.mark.asyncio
async def test_link_local_target_is_refused_without_connecting_even_if_everything_is_allowed():
    result = await probe(ProbeTarget(1, "169.254.169.254", 80), timeout=2, allowed="0.0.0.0/0")
    assert (result.ok, result.error) == (False, "address not allowed")
    assert result.latency_ms < 100


@pytest.mark.asyncio
async def test_twenty_hanging_endpoints_do_not_delay_the_healthy_ones(fleet):
    hanging = [target_for(fleet, "hang") for _ in range(20)]
    healthy = [target_for(fleet) for _ in range(20)]
    started = time.perf_counter()
    results = await probe_many(hanging + healthy, timeout=1, allowed=LOOPBACK, concurrency=50)
    elapsed = time.perf_counter() - started
    assert [r.id for r in results] == [t.id for t in hanging + healthy]
    assert all(r.error == "timed out after 1 s" for r in results[:20])
    assert all(r.ok for r in results[20:])
    assert max(r.latency_ms for r in results[20:]) < 500
    assert 0.9 < elapsed < 2.0


def test_sync_sweep_works_from_plain_code(fleet):
    targets = [target_for(fleet), target_for(fleet, "http500")]
    results = ollama.probe_many_sync(targets, timeout=2, allowed=LOOPBACK)
    assert [(r.ok, r.error) for r in results] == [(True, ""), (False, "HTTP 500")]


# -- the HTTP/1.1 reader against hand-written replies --------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(replies: dict[bytes, bytes], *, once: bool = False) -> AsyncIterator[int]:
    """Serve canned bytes per request path on a free loopback port; yield the port.

    With `once`, every connection gets one reply (whatever the path) and is closed.
    """
    handlers: set[asyncio.Task] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        writers.add(writer)
        try:
            while True:
                path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
                default = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                writer.write(next(iter(replies.values())) if once else replies.get(path, default))
                await writer.drain()
                if once:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:  # end every handler before the loop closes (Python 3.11 logs otherwise)
            writer.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 2)


def chunked(body: bytes, size: int = 100) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\nX-Trailer: 1\r\n\r\n"


def plain(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.asyncio
async def test_chunked_replies_with_extensions_and_trailers_are_read_whole():
    replies = {b"/api/version": plain(fixture("version.json")), b"/api/tags": chunked(fixture("tags.json"))}
    async with raw_server(replies) as port:  # /api/ps answers 404, like old Ollama
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=2, allowed=LOOPBACK)
    assert result.ok and len(result.models) == 3


@pytest.mark.asyncio
async def test_a_declared_oversized_reply_is_refused_without_waiting_for_its_body():
    replies = {b"/api/tags": b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n{"}
    async with raw_server(replies) as port:
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=5, allowed=LOOPBACK)
    assert result.error == "reply larger than 1 MiB"
    assert result.latency_ms < 1000


@pytest.mark.asyncio
async def test_a_chunked_reply_claiming_a_huge_chunk_is_cut_off_at_one_mib():
    huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n" + b" " * (1024 * 1024 + 10)
    async with raw_server({b"/api/tags": huge}) as port:
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=5, allowed=LOOPBACK)
    assert result.error == "reply larger than 1 MiB"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10, 20\r\n\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "connection closed by the server"),
        (b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\n{}", "reply is not valid HTTP"),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", "reply is not valid HTTP"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", "reply is not valid HTTP"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "reply is not valid HTTP",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 70_000 + b"\r\n\r\n", "reply is not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "connection closed by the server"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "connection closed by the server"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}", "connection closed by the server"),
        (chunked(b"{}")[:-2] + b"X-Padding: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\n", "reply larger than 1 MiB"),
    ],
)
async def test_malformed_http_is_reported_not_raised(reply, error):
    async with raw_server({b"*": reply}, once=True) as port:
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=2, allowed=LOOPBACK)
    assert (result.ok, result.error) == (False, error)


@pytest.mark.asyncio
async def test_an_interim_100_continue_is_skipped_for_the_reply_that_follows():
    replies = {b"/api/tags": b"HTTP/1.1 100 Continue\r\n\r\n" + plain(fixture("tags.json"))}
    async with raw_server(replies) as port:
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=2, allowed=LOOPBACK)
    assert result.ok and len(result.models) == 3


@pytest.mark.asyncio
async def test_a_body_without_length_or_chunks_ends_when_the_server_closes():
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + fixture("tags.json")
    async with raw_server({b"*": reply}, once=True) as port:
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=2, allowed=LOOPBACK)
    assert result.ok and len(result.models) == 3


@pytest.mark.asyncio
async def test_bytes_after_a_reply_are_never_read_as_the_next_reply():
    smuggled = plain(b'{"models": [{"name": "smuggled:latest"}]}')
    replies = {b"/api/version": plain(fixture("version.json")) + smuggled, b"/api/tags": plain(fixture("tags.json"))}
    async with raw_server(replies) as port:
        result = await probe(ProbeTarget(1, "127.0.0.1", port), timeout=2, allowed=LOOPBACK)
    assert result.ok and result.version == "0.5.1"
    assert "smuggled:latest" not in {m.name for m in result.models}


def test_fixtures_are_the_documented_shapes():
    # Guard against editing a fixture into something Ollama never sends.
    tags = json.loads(fixture("tags.json"))
    assert set(tags) == {"models"}
    assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(tags["models"][0])
    assert {"expires_at", "size_vram"} <= set(json.loads(fixture("ps.json"))["models"][0])
