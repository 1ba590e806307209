"""Where the proxy may connect upstream: the guard against server-side request forgery (the "test connection" probe
that uses it is `proxy.probe`).

A project's upstream URL is chosen by whoever manages projects, not by the operator, so the proxy must not become a way
into the operator's own network (its databases, its admin panels) or to a cloud's metadata service (which hands out
the machine's credentials). The rules, in `address_refusal`:

- refused always, whatever the settings say: link-local addresses (169.254.0.0/16, fe80::/10), cloud metadata
  addresses (`METADATA_ADDRESSES`), the unspecified address (0.0.0.0, ::) and 0.0.0.0/8, multicast, reserved and
  broadcast addresses;
- refused unless inside an `UPSTREAM_ALLOW_PRIVATE_NETWORKS` entry: private ranges (RFC 1918, loopback, fc00::/7,
  100.64.0.0/10 shared, and whatever else is not globally routable);
- allowed: public addresses.

An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96`) is
judged by the IPv4 address it carries.

They are checked twice. When a URL is saved, `check_upstream_url` refuses it with a clear message (the scheme, the
parts a base URL must not have, and every address its host name resolves to then). When the proxy connects,
`allowed_addresses` resolves the name again and checks every address before it connects, on every new connection: a
name that resolved to a public address at save time and to 169.254.169.254 now (DNS rebinding) is refused then.

The global `UPSTREAM_BASE_URL` is the operator's own setting and is trusted: its origin is not guarded (see
`proxy.upstream`). Neither is the connection to an egress proxy set in the environment (HTTPS_PROXY/HTTP_PROXY):
that proxy, which the operator configured, resolves the upstream's name itself, so only the save-time check applies.
"""

import asyncio
import ipaddress
import re
import socket
import ssl
import threading
import typing
import urllib.request
from functools import lru_cache
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2000
RESOLVE_TIMEOUT = 5.0  # seconds a save-time name resolution may take

# Cloud metadata services (and their kin), refused whatever UPSTREAM_ALLOW_PRIVATE_NETWORKS says. Those inside
# 169.254.0.0/16 are refused as link-local anyway; they are listed so that the reason names them.
METADATA_ADDRESSES: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "AWS, GCP, Azure, Oracle, DigitalOcean and OpenStack instance metadata",
    ipaddress.ip_address("169.254.170.2"): "AWS ECS task metadata",
    ipaddress.ip_address("fd00:ec2::254"): "AWS instance metadata over IPv6",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud instance metadata",
    ipaddress.ip_address("168.63.129.16"): "the Azure host's wire server",
    ipaddress.ip_address("192.0.0.192"): "Oracle Cloud's legacy instance metadata",
}

_ALWAYS_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "in 0.0.0.0/8 ('this network')"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4, with the broadcast address)"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)
_PRIVATE: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("10.0.0.0/8", "private (10.0.0.0/8)"),
        ("172.16.0.0/12", "private (172.16.0.0/12)"),
        ("192.168.0.0/16", "private (192.168.0.0/16)"),
        ("127.0.0.0/8", "loopback"),
        ("100.64.0.0/10", "in the shared address space (100.64.0.0/10)"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (fc00::/7)"),
        ("fec0::/10", "site-local (fec0::/10)"),
    )
)
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated; only :: and ::1 in it mean anything today

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_NUMERIC_LABEL_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class UpstreamUrlError(ValueError):
    """An upstream URL that may not be used; `str()` is one line for whoever typed it in."""


class AddressRefused(Exception):
    """A connection the guard refused: the host resolves to an address `address_refusal` refuses."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host, self.address, self.reason = host, address, reason
        shown = host if host == address else f"{host} ({address})"
        super().__init__(f"refused to connect to {shown}: the address is {reason}")


def _parse_networks(entries: typing.Iterable[str], setting: str = "UPSTREAM_ALLOW_PRIVATE_NETWORKS") -> list[IPNetwork]:
    """The networks of a list of CIDRs (an address alone is a network of one); ValueError names a bad entry."""
    networks = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise ValueError(
                f"{setting}: {text!r} is not a network ({exc}); write it like 10.0.0.0/8 or fd12:3456::/48"
            ) from None
    return networks


@lru_cache(maxsize=8)
def _allowed_private_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(_parse_networks(entries))
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, IPv4-translated, 6to4, NAT64), if any."""
    if ip in _IPV4_MAPPED:
        return ip.ipv4_mapped
    if ip in _IPV4_TRANSLATED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_refusal(address: str) -> str | None:
    """None when the proxy may connect to this IP address, else why not, in words (e.g. "link-local")."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if ip.version == 6:
        carried = _carried_ipv4(ip)
        if carried is not None:
            reason = address_refusal(str(carried))
            return None if reason is None else f"an IPv6 form of {carried}, which is {reason}"
    described = METADATA_ADDRESSES.get(ip)
    if described is not None:
        return f"a cloud metadata address ({described})"
    if ip.is_unspecified:
        return "the unspecified address"
    for network, reason in _ALWAYS_REFUSED:
        if ip in network:
            return reason
    if ip.version == 6 and ip in _IPV4_COMPATIBLE and not ip.is_loopback:
        return "reserved (a deprecated IPv4-compatible address)"
    private = next((reason for network, reason in _PRIVATE if ip in network), None)
    if private is None and not ip.is_global:
        private = "not a public address"
    if private is None:
        return None
    allowed = _allowed_private_networks(tuple(settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS))
    if any(ip in network for network in allowed if network.version == ip.version):
        return None
    return f"{private}, not in UPSTREAM_ALLOW_PRIVATE_NETWORKS"


# --- saving a URL ---------------------------------------------------------------------------------------------------
def check_upstream_url(url: str, *, resolve: bool = True) -> str:
    """The URL, normalized (host in lower case, IDN as punycode, no trailing `/`), or UpstreamUrlError saying why not.

    With `resolve` (the default) the host name is resolved now and every address it has must be allowed; without it,
    only what can be told from the text is checked (the connection is checked again when it is made).
    """
    if not isinstance(url, str) or not url.strip():
        raise UpstreamUrlError("Enter the upstream's base URL, e.g. https://api.openai.com/v1.")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise UpstreamUrlError(f"The URL is too long (at most {MAX_URL_LENGTH} characters).")
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise UpstreamUrlError("The URL must not contain spaces or control characters.")
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        raise UpstreamUrlError("The URL must start with https://.")
    if "?" in url or "#" in url:
        raise UpstreamUrlError("A base URL has no query (?…) or fragment (#…).")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UpstreamUrlError(f"This is not a valid URL ({exc}).") from None
    if parsed.userinfo:
        raise UpstreamUrlError("The URL must not contain a user name or password; the key is set separately.")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise UpstreamUrlError("The URL has no host name.")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UpstreamUrlError(f"The port {parsed.port} is out of range (1-65535).")
    if parsed.scheme == "http" and host not in settings.UPSTREAM_ALLOW_HTTP_HOSTS:
        raise UpstreamUrlError(
            f"The URL must start with https:// (plain http:// only for hosts listed in UPSTREAM_ALLOW_HTTP_HOSTS, "
            f"which {host} is not)."
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        reason = address_refusal(host)
        if reason is not None:
            raise UpstreamUrlError(f"The address {host} may not be used as an upstream: it is {reason}.")
    else:
        if not _HOST_NAME_RE.match(host):
            raise UpstreamUrlError(f"{host!r} is not a valid host name.")
        if _NUMERIC_LABEL_RE.match(host.rstrip(".").rsplit(".", 1)[-1]):
            # 2130706433, 0x7f.1, 127.000.000.001: addresses in forms the resolver would read as 127.0.0.1.
            raise UpstreamUrlError(f"{host} is neither a host name nor an IP address written as a.b.c.d.")
        if resolve:
            for address in _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80)):
                reason = address_refusal(address)
                if reason is not None:
                    raise UpstreamUrlError(
                        f"{host} resolves to {address}, which may not be used as an upstream: it is {reason}."
                    )
    return str(parsed).rstrip("/")


def _resolve(host: str, port: int) -> list[str]:
    """Every address of a host name, in a thread bounded by RESOLVE_TIMEOUT (the resolver itself has no timeout)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="upstream-url-resolve", daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT)
    if not outcome:
        raise UpstreamUrlError(f"The host name {host} did not resolve within {RESOLVE_TIMEOUT:g} s; try again.")
    if isinstance(outcome[0], BaseException):
        raise UpstreamUrlError(f"The host name {host} does not resolve ({_resolver_error(outcome[0])}).")
    addresses = _addresses(outcome[0])
    if not addresses:
        raise UpstreamUrlError(f"The host name {host} has no address.")
    return addresses


def _addresses(infos: list) -> list[str]:
    """The distinct addresses of getaddrinfo's answer, in its order."""
    return list(dict.fromkeys(info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))


def _resolver_error(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# --- connecting -----------------------------------------------------------------------------------------------------
async def allowed_addresses(host: str, port: int, timeout: float | None) -> list[str]:
    """The addresses a guarded connection may try, in the resolver's order: the host is resolved here, on the event
    loop, within the connect timeout, and every address it resolves to is checked (one refused address refuses the
    name). The connection is then made to an address, so the name is not resolved again (a second answer could
    differ); TLS still uses the name for SNI and the certificate (`llmproxy.http11`)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise httpx.ConnectTimeout(f"{host} did not resolve within {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise httpx.ConnectError(f"{host} does not resolve ({_resolver_error(exc)})") from None
    addresses = _addresses(infos)
    if not addresses:
        raise httpx.ConnectError(f"{host} has no address")
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            refused = AddressRefused(host, address, reason)
            raise httpx.ConnectError(str(refused)) from refused
    return addresses


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """An exception and what caused it, outermost first (the first of a group stands for it).

    httpcore (behind an egress proxy) wraps an error as the argument of its own (`ConnectError(OSError(…))`), and
    its pool re-raises with `from None`, so the argument is followed too.
    """
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        elif exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            exc = None if exc.__suppress_context__ else exc.__context__
    return chain


def is_address_refused(exc: BaseException) -> bool:
    """Whether an exception (httpx's ConnectError, raised `from` an `AddressRefused`) comes from a connection the guard
    refused."""
    return any(isinstance(cause, AddressRefused) for cause in exception_chain(exc))


# --- transports -----------------------------------------------------------------------------------------------------
Origin = tuple[str, str, int]


@lru_cache(maxsize=4096)
def origin(url: str) -> Origin:
    """(scheme, host, port) of a URL, as httpx connects to it (host in lower case, punycode, IPv6 without brackets)."""
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.raw_host.decode("ascii").lower(), port


def is_trusted_origin(url: str) -> bool:
    """Whether a URL has the origin of the global UPSTREAM_BASE_URL: the operator's own, not guarded."""
    return origin(url) == origin(settings.UPSTREAM_BASE_URL)


def environment_proxy(url: str) -> str | None:
    """An egress proxy from HTTPS_PROXY/HTTP_PROXY (unless NO_PROXY exempts the URL's host), as httpx would use."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


@lru_cache(maxsize=1)
def ssl_context() -> ssl.SSLContext:
    """One TLS context for every upstream connection of the process (httpx's defaults: certifi's CAs, or
    SSL_CERT_FILE/SSL_CERT_DIR). httpx would make one per transport, and each costs about 1 MiB and 80 ms."""
    return httpx.create_ssl_context()
