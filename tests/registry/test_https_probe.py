"""Probing over TLS: real HTTPS servers on loopback with certificates made here, and the safety rules."""

from __future__ import annotations

import os
import ssl

import pytest

from devtools.fake_ollama import FakeFleet
from devtools.tls import TestCA, self_signed
from registry import http11, ollama
from registry.ollama import ProbeTarget, probe, probe_many_sync

LOOPBACK = "127.0.0.0/8,::1/128"
SECRET = "Bearer tls-probe-secret-7f3a"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = TestCA.create(folder)
    return {
        "ca": ca.cert_path,
        "good": ca.issue(folder, ["127.0.0.1", "localhost"]),
        "self_signed": self_signed(folder, ["127.0.0.1", "localhost"]),
        "other_address": ca.issue(folder, ["127.0.0.9"]),
        "other_name": ca.issue(folder, ["gpu-02.example"]),
        "expired": ca.issue(folder, ["127.0.0.1"], expired=True),
    }


@pytest.fixture(scope="module")
def fleet():
    with FakeFleet() as fleet:
        yield fleet


def https_target(fleet: FakeFleet, cert: tuple[str, str], *, address: str = "127.0.0.1", **options) -> ProbeTarget:
    options.setdefault("models", ["llama3:8b", "mistral:7b"])
    options.setdefault("loaded", ["llama3:8b"])
    authorization = options.pop("authorization", "")
    host, port = fleet.add(certfile=cert[0], keyfile=cert[1], **options)
    return ProbeTarget(id=port, address=address, port=port, scheme="https", authorization=authorization)


async def test_https_endpoint_signed_by_the_configured_ca_is_healthy_with_its_models(fleet, certs):
    result = await probe(https_target(fleet, certs["good"]), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert result.ok, result.error
    assert result.version == "0.5.7"
    assert {m.name: m.loaded for m in result.models} == {"llama3:8b": True, "mistral:7b": False}


async def test_a_host_name_is_checked_against_the_certificates_names(fleet, certs):
    result = await probe(
        https_target(fleet, certs["good"], address="localhost"), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"]
    )
    assert result.ok, result.error
    result = await probe(
        https_target(fleet, certs["other_name"], address="localhost"),
        timeout=3,
        allowed=LOOPBACK,
        ca_bundle=certs["ca"],
    )
    assert (result.ok, result.error) == (False, "certificate does not match the host name")


async def test_a_self_signed_certificate_is_not_trusted(fleet, certs):
    result = await probe(https_target(fleet, certs["self_signed"]), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert (result.ok, result.error, result.models) == (False, "certificate not trusted", ())


async def test_without_the_bundle_the_system_store_does_not_trust_a_private_ca(fleet, certs):
    result = await probe(https_target(fleet, certs["good"]), timeout=3, allowed=LOOPBACK)
    assert (result.ok, result.error) == (False, "certificate not trusted")


async def test_a_certificate_for_another_address_or_out_of_date_is_refused(fleet, certs):
    other = await probe(https_target(fleet, certs["other_address"]), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert (other.ok, other.error) == (False, "certificate does not match the IP address")
    expired = await probe(https_target(fleet, certs["expired"]), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert (expired.ok, expired.error) == (False, "certificate expired")


async def test_the_authorization_header_is_sent_and_a_proxy_that_requires_it_answers(fleet, certs):
    guarded = https_target(fleet, certs["good"], auth=SECRET)
    refused = await probe(guarded, timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert (refused.ok, refused.error) == (False, "HTTP 401")
    with_header = ProbeTarget(guarded.id, guarded.address, guarded.port, "https", SECRET)
    answered = await probe(with_header, timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert answered.ok, answered.error
    wrong = ProbeTarget(guarded.id, guarded.address, guarded.port, "https", "Bearer not-it")
    assert (await probe(wrong, timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])).error == "HTTP 401"


async def test_the_authorization_header_works_over_plain_http_too(fleet):
    host, port = fleet.add(models=["llama3:8b"], auth=SECRET)
    result = await probe(ProbeTarget(1, host, port, "http", SECRET), timeout=3, allowed=LOOPBACK)
    assert result.ok, result.error


def test_the_secret_is_not_in_a_targets_repr():
    assert SECRET not in repr(ProbeTarget(1, "127.0.0.1", 11434, "https", SECRET))


@pytest.mark.parametrize(
    ("mode", "error"), [("redirect", "redirect refused"), ("oversized", "reply larger than 1 MiB")]
)
async def test_over_https_redirects_are_not_followed_and_replies_are_capped(fleet, certs, mode, error):
    result = await probe(
        https_target(fleet, certs["good"], mode=mode), timeout=5, allowed=LOOPBACK, ca_bundle=certs["ca"]
    )
    assert (result.ok, result.error) == (False, error)


async def test_the_allow_list_is_checked_before_any_tls_connection(fleet, certs):
    result = await probe(https_target(fleet, certs["good"]), timeout=3, allowed="127.0.0.9/32", ca_bundle=certs["ca"])
    assert (result.ok, result.error) == (False, "address not allowed")


async def test_plain_http_is_still_plain_and_does_not_speak_to_a_tls_server(fleet, certs):
    host, port = fleet.add(models=["llama3:8b"])
    plain = await probe(ProbeTarget(1, host, port), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"])
    assert plain.ok, plain.error
    tls_server = https_target(fleet, certs["good"])
    as_http = await probe(ProbeTarget(2, tls_server.address, tls_server.port), timeout=3, allowed=LOOPBACK)
    assert not as_http.ok
    https_to_plain = await probe(
        ProbeTarget(3, host, port, "https"), timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"]
    )
    assert (https_to_plain.ok, https_to_plain.error) == (False, "TLS handshake failed")


def test_a_sweep_on_the_fast_loop_probes_https_and_http_side_by_side(fleet, certs):
    secure = https_target(fleet, certs["good"])
    wrong = https_target(fleet, certs["self_signed"])
    host, port = fleet.add(models=["llama3:8b"])
    results = probe_many_sync(
        [secure, wrong, ProbeTarget(3, host, port)], timeout=3, allowed=LOOPBACK, ca_bundle=certs["ca"]
    )
    assert [(r.ok, r.error) for r in results] == [(True, ""), (False, "certificate not trusted"), (True, "")]


async def test_an_unreadable_ca_bundle_fails_https_probes_with_a_sentence(fleet, certs, tmp_path):
    missing = str(tmp_path / "gone.pem")
    result = await probe(https_target(fleet, certs["good"]), timeout=3, allowed=LOOPBACK, ca_bundle=missing)
    assert (result.ok, result.error) == (False, "the CA bundle (PROBE_CA_BUNDLE) cannot be read")


def test_one_tls_context_per_process_and_bundle_rebuilt_when_the_file_changes(certs, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(open(certs["ca"], "rb").read())
    first = http11.tls_context(str(bundle))
    assert http11.tls_context(str(bundle)) is first
    assert http11.tls_context("") is http11.tls_context("")
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    stat = bundle.stat()
    os.utime(bundle, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert http11.tls_context(str(bundle)) is not first


def test_an_authorization_value_that_would_break_the_header_line_is_never_sent():
    with pytest.raises(ollama.OllamaError) as refused:
        http11.authorization_header("Bearer x\r\nHost: evil")
    assert "evil" not in str(refused.value)
