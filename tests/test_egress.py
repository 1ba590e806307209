"""The egress guard (llmproxy.egress) and the per-origin upstream transports (proxy.upstream), with real sockets.

No function is patched: connections go to real listening sockets on 127.0.0.1 (the mock upstream, a TLS server made
here), names are resolved by the system's resolver (`localhost`, and `.invalid`, which never resolves).
"""

import asyncio
import datetime
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured

from llmproxy import egress, http11
from llmproxy.egress import AddressRefused, UpstreamUrlError, address_refusal, check_upstream_url
from proxy import probe, upstream
from tests.conftest import VALID_KEY
from tests.live import free_port
from tests.mock_upstream import MockUpstream

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ["127.0.0.0/8", "::1/128"]


@pytest.fixture(scope="module")
def mocks():
    """Two mock upstreams on two ports of 127.0.0.1."""
    started = [MockUpstream().start_in_thread(), MockUpstream().start_in_thread()]
    yield started
    for mock in started:
        mock.stop()


@pytest.fixture
def mock(mocks):
    mocks[0].reset()
    return mocks[0]


@pytest.fixture(autouse=True)
def global_upstream_elsewhere(settings):
    """The global upstream is not the mocks' origin (so they are guarded), and nothing is allowed but what a test
    allows."""
    settings.UPSTREAM_BASE_URL = "https://api.openai.com/v1"
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = []
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = []


def bearer(key: str = VALID_KEY) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


def refusal(url: str, **kwargs) -> str:
    with pytest.raises(UpstreamUrlError) as caught:
        check_upstream_url(url, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- the URL rules ----------------------------------------------------------------------------------------------------
def test_https_is_required_and_the_url_is_normalized():
    assert "https://" in refusal("http://api.example.com/v1", resolve=False)
    assert "https://" in refusal("ftp://api.example.com/v1", resolve=False)
    assert "https://" in refusal("api.example.com/v1", resolve=False)
    assert check_upstream_url("https://API.Example.com:443/v1/", resolve=False) == "https://api.example.com/v1"
    assert check_upstream_url("https://api.example.com:8443", resolve=False) == "https://api.example.com:8443"


def test_plain_http_only_for_a_listed_host(settings):
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["vllm.internal", "127.0.0.1"]
    assert check_upstream_url("http://vllm.internal:8000/v1", resolve=False) == "http://vllm.internal:8000/v1"
    assert "UPSTREAM_ALLOW_HTTP_HOSTS" in refusal("http://other.internal:8000/v1", resolve=False)
    # Listing a host for http does not allow its private address: that is the other setting.
    assert "loopback" in refusal("http://127.0.0.1:8000/v1")
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    assert check_upstream_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("https://user:secret@api.example.com/v1", "user name or password"),
        ("https://api.example.com/v1?api-version=1", "query"),
        ("https://api.example.com/v1?", "query"),
        ("https://api.example.com/v1#part", "fragment"),
        ("https:///v1", "no host"),
        ("https://api.example.com:99999/v1", "out of range"),
        ("https://api.example.com:0/v1", "out of range"),
        ("https://api example.com/v1", "spaces"),
        ("https://api.example.com/" + "a" * 2000, "too long"),
        ("https://2130706433/v1", "a.b.c.d"),  # 127.0.0.1 to the resolver
        ("https://0x7f.1/v1", "a.b.c.d"),
        ("https://127.000.000.001/v1", "not a valid URL"),
        ("https://exa%mple.com/v1", "not a valid host name"),
        ("", "Enter"),
    ],
)
def test_parts_a_base_url_must_not_have(url, said):
    assert said in refusal(url, resolve=False)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, ...
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",  # inside 100.64.0.0/10, which is allowed below
        "168.63.129.16",  # a public address, yet Azure's wire server
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",
        "2002:a9fe:a9fe::1",  # 6to4
        "64:ff9b::169.254.169.254",  # NAT64
        "169.254.1.1",
        "fe80::1",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "224.0.0.251",
        "ff02::1",
        "255.255.255.255",
        "240.0.0.1",
        "::169.254.169.254",
    ],
)
def test_metadata_link_local_and_reserved_addresses_are_refused_always(settings, address):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["0.0.0.0/0", "::/0", "169.254.0.0/16", "fd00::/8"]
    assert address_refusal(address) is not None
    literal = f"[{address}]" if ":" in address else address
    assert "may not be used" in refusal(f"https://{literal}/v1", resolve=False)


def test_the_reason_names_a_metadata_service_and_the_ipv4_address_an_ipv6_one_carries():
    assert "Alibaba" in address_refusal("100.100.100.200")
    assert "AWS instance metadata over IPv6" in address_refusal("fd00:ec2::254")
    assert address_refusal("::ffff:127.0.0.1").startswith("an IPv6 form of 127.0.0.1, which is loopback")


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("::1", "::1/128"),
        ("10.20.30.40", "10.0.0.0/8"),
        ("172.16.5.4", "172.16.0.0/12"),
        ("192.168.1.10", "192.168.0.0/16"),
        ("100.64.0.9", "100.64.0.0/10"),
        ("fd12:3456::1", "fd12:3456::/48"),
        ("::ffff:10.1.2.3", "10.0.0.0/8"),  # judged by the IPv4 address it carries
    ],
)
def test_private_addresses_only_inside_an_allowed_network(settings, address, network):
    reason = address_refusal(address)
    assert reason is not None and "UPSTREAM_ALLOW_PRIVATE_NETWORKS" in reason
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["192.0.2.0/24", network]
    assert address_refusal(address) is None


def test_public_addresses_are_allowed():
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::8.8.8.8"):
        assert address_refusal(address) is None, address
    assert address_refusal("not-an-address") == "not an IP address"


def test_a_name_is_judged_by_every_address_it_resolves_to(settings):
    message = refusal("https://localhost:8443/v1")
    assert "localhost resolves to" in message and "loopback" in message
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = LOOPBACK
    assert check_upstream_url("https://localhost:8443/v1") == "https://localhost:8443/v1"


def test_a_name_that_does_not_resolve_is_an_error_saying_so():
    assert "does not resolve" in refusal("https://no-such-upstream.invalid/v1")
    # Offline validation leaves the name to the connection's own check.
    assert check_upstream_url("https://no-such-upstream.invalid/v1", resolve=False)


def test_a_bad_private_network_entry(settings):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["10.0.0.0/8", "10.0.0.1/8"]
    with pytest.raises(ImproperlyConfigured, match="'10.0.0.1/8'"):
        address_refusal("10.1.1.1")


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "fd00::/129", "vllm.internal"])
def test_the_process_refuses_to_start_with_a_bad_private_network_entry(entry):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "ENV_FILE": "/dev/null", "DEBUG": "1", "UPSTREAM_ALLOW_PRIVATE_NETWORKS": entry},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "UPSTREAM_ALLOW_PRIVATE_NETWORKS" in lines[0] and repr(entry) in lines[0], lines


# --- the guard under the per-origin transports ------------------------------------------------------------------------
async def get(base_url: str, path: str = "/models", key: str = VALID_KEY) -> httpx.Response:
    request = upstream.build_request("GET", upstream.url(base_url, path, ""), bearer(key), b"")
    response = await upstream.send(request)
    await response.aread()
    return response


def test_a_guarded_origin_is_refused_at_connect_time_unless_its_network_is_allowed(settings, mock):
    async def refused():
        with pytest.raises(httpx.ConnectError) as caught:
            await get(mock.base_url)
        assert upstream.transport(mock.base_url).guarded
        return caught.value

    exc = asyncio.run(refused())
    assert egress.is_address_refused(exc)
    assert isinstance(exc.__cause__, AddressRefused)
    assert "127.0.0.1" in str(exc) and "loopback" in str(exc)
    assert mock.requests == []  # nothing reached it

    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    response = asyncio.run(get(mock.base_url))
    assert response.status_code == 200 and len(response.json()["data"]) == 2
    assert mock.last("/models").header("authorization") == f"Bearer {VALID_KEY}"


def test_a_name_is_resolved_and_checked_on_every_connection(settings, mock):
    """What makes DNS rebinding useless: the URL passed its save-time check (without resolving here), the name
    resolves to a refused address when the connection is made, and the connection is refused then."""
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["localhost"]
    base = check_upstream_url(f"http://localhost:{mock.port}/v1", resolve=False)

    async def attempt():
        with pytest.raises(httpx.ConnectError) as caught:
            await get(base)
        return caught.value

    exc = asyncio.run(attempt())
    assert egress.is_address_refused(exc) and "localhost (127.0.0.1)" in str(exc)
    assert not egress.is_address_refused(httpx.ConnectError("connection refused"))
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = LOOPBACK
    assert asyncio.run(get(base)).status_code == 200


def test_each_origin_has_its_own_transport_and_the_global_one_is_not_guarded(settings, mocks):
    first, second = mocks
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    settings.UPSTREAM_BASE_URL = first.base_url

    async def check():
        one, two = upstream.transport(first.base_url), upstream.transport(second.base_url)
        assert one is not two
        assert upstream.transport(f"http://127.0.0.1:{second.port}/other?x=1") is two  # same origin, same pools
        assert upstream.transport() is one  # None: the global UPSTREAM_BASE_URL
        assert not one.guarded and two.guarded
        for found in (one, two):
            assert isinstance(found.transport, http11.Transport)
            assert (found.transport._max, found.transport._max_idle) == (2000, 128)  # today's limits, per origin
        assert (await get(first.base_url)).status_code == 200
        assert (await get(second.base_url)).status_code == 200
        return one, two

    one, two = asyncio.run(check())
    assert first.last("/models") and second.last("/models")
    # Another event loop has its own transports (those of a closed loop are dropped when the next loop begins).
    again = asyncio.run(check())
    assert again[0] is not one and again[1] is not two


def test_the_global_origin_is_trusted_without_any_allowance(settings, mock):
    settings.UPSTREAM_BASE_URL = mock.base_url
    assert asyncio.run(get(mock.base_url)).status_code == 200


def test_the_connection_to_an_egress_proxy_from_the_environment_is_not_guarded(monkeypatch, mock):
    """HTTP_PROXY names the operator's egress proxy (here the mock, on 127.0.0.1, which no setting allows): the
    connection goes to it, and the upstream's name is the proxy's to resolve."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{mock.port}")

    async def through_proxy():
        assert not upstream.transport("http://upstream.example/v1").guarded
        return await get("http://upstream.example/v1")

    response = asyncio.run(through_proxy())
    assert response.status_code == 404  # the mock is no real proxy, but the request reached it
    assert mock.last().path == "http://upstream.example/v1/models"


def make_tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name `localhost` only (not for 127.0.0.1), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


# --- "test connection" ------------------------------------------------------------------------------------------------
@pytest.fixture
def reachable(settings, mock):
    """The mock, as a project's upstream the settings allow."""
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    return mock


def test_probe_succeeds_with_the_model_count(reachable):
    result = probe.probe_sync(reachable.base_url + "/", bearer())
    assert result == probe.ProbeResult(True, 200, "Connected: the upstream lists 2 models.", 2)
    assert reachable.last().path == "/v1/models" and reachable.last().method == "GET"


def test_probe_reports_the_upstreams_error_without_the_key(reachable):
    wrong = "not-a-real-key-0123456789abcdef"
    result = probe.probe_sync(reachable.base_url, bearer(wrong))
    assert (result.ok, result.status, result.model_count) == (False, 401, None)
    assert result.message == "The upstream answered 401: Incorrect API key provided."
    # An answer that repeats the key (here the mock echoing the request's headers) has it cut out.
    echoed = probe.probe_sync(reachable.base_url, [*bearer(), (b"x-mock-echo", b"1")])
    assert echoed.ok is False and echoed.status == 200 and "not with a model list" in echoed.message
    assert "authorization" in echoed.message and "[redacted]" in echoed.message
    assert VALID_KEY not in echoed.message and VALID_KEY[10:30] not in echoed.message


def test_probe_reports_a_failed_connection(settings, reachable):
    closed = free_port()
    result = probe.probe_sync(f"http://127.0.0.1:{closed}/v1", bearer())
    assert (result.ok, result.status) == (False, None)
    assert "refused" in result.message

    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = []
    result = probe.probe_sync(reachable.base_url, bearer())  # an address: refused by the URL's own check
    assert (result.ok, result.status) == (False, None)
    assert result.message == (
        "The address 127.0.0.1 may not be used as an upstream: it is loopback, not in UPSTREAM_ALLOW_PRIVATE_NETWORKS."
    )
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["127.0.0.1", "localhost"]
    result = probe.probe_sync(f"http://localhost:{reachable.port}/v1", bearer())  # a name: refused by the guard
    assert (result.ok, result.status) == (False, None)
    assert result.message.startswith("Not connected: refused to connect to localhost (127.0.0.1): the address is")
    assert reachable.requests == []

    settings.UPSTREAM_ALLOW_HTTP_HOSTS = []
    assert "https://" in probe.probe_sync(reachable.base_url, bearer()).message
    assert "not a valid URL" in probe.probe_sync("https://[::1/v1", bearer()).message

    result = probe.probe_sync("https://no-such-upstream.invalid/v1", bearer())
    assert not result.ok and "does not resolve" in result.message


def test_probe_of_the_global_upstream_is_not_guarded(settings, mock):
    settings.UPSTREAM_BASE_URL = mock.base_url
    result = probe.probe_sync(mock.base_url, bearer())
    assert result.ok and result.model_count == 2


def test_probe_runs_on_an_event_loop_too(reachable):
    result = asyncio.run(probe.probe(reachable.base_url, bearer()))
    assert result.ok


def test_probe_reports_a_tls_failure(settings, tmp_path):
    """A server whose certificate no public authority signed: the handshake fails, and the probe says so."""
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = LOOPBACK
    cert_file, key_file = make_tls_files(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)

    async def answer(reader, writer):
        writer.close()

    async def run():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        try:
            return await probe.probe(f"https://localhost:{server.sockets[0].getsockname()[1]}/v1", bearer())
        finally:
            server.close()

    result = asyncio.run(run())
    assert not result.ok and result.status is None
    assert result.message.startswith("The TLS handshake failed"), result.message


def test_upstream_url_text():
    assert upstream.url("https://api.example.com/v1", "/models", "") == "https://api.example.com/v1/models"
    assert upstream.url("https://x.test", "/files", "limit=2") == "https://x.test/files?limit=2"
