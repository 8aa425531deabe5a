"""Challenge validation over the network: http-01 and dns-01 (RFC 8555 §8.3, §8.4), tls-alpn-01
(RFC 8737), for DNS names and IP addresses (RFC 8738).

Every connection goes only to addresses the operator allows (`validation.allowed_networks`,
`validation.denied_networks`), including after a redirect. Names are resolved through the
configured resolvers (or the system resolver when none are set). A failure carries the ACME
problem type it becomes and whether it is worth retrying (timeouts, SERVFAIL, refused
connections) or final (a wrong answer).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from acme_server.jws import b64encode
from acme_server.settings import ValidationSettings

ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ACME_TLS_ALPN = "acme-tls/1"
MAX_CNAME_HOPS = 8


class ValidationFailure(Exception):
    """Why a challenge failed: `problem` is the ACME error type; `transient` means retry."""

    def __init__(self, problem: str, detail: str, *, transient: bool = False) -> None:
        super().__init__(detail)
        self.problem = problem
        self.detail = detail
        self.transient = transient


@dataclass(frozen=True)
class Target:
    identifier_type: str  # dns or ip
    value: str  # the name (without "*.") or the address


def _resolver(settings: ValidationSettings) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=not settings.resolvers)
    if settings.resolvers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in settings.resolvers
        ]
    resolver.timeout = settings.timeout
    resolver.lifetime = settings.timeout
    return resolver


def resolve_addresses(name: str, settings: ValidationSettings) -> list[str]:
    """A and AAAA addresses of `name` (IPv4 first); raises ValidationFailure("dns")."""
    if not settings.resolvers:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            transient = exc.errno == socket.EAI_AGAIN
            raise ValidationFailure(
                "dns", f"cannot resolve {name}: {exc.strerror}", transient=transient
            ) from None
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return sorted(found, key=lambda a: ipaddress.ip_address(a).version)
    resolver = _resolver(settings)
    addresses: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise ValidationFailure("dns", f"{name} does not exist (NXDOMAIN)") from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise ValidationFailure(
                "dns", f"DNS lookup of {name} failed: {type(exc).__name__}", transient=True
            ) from None
        if answer.rrset is not None:
            addresses.extend(rr.address for rr in answer.rrset)
    if not addresses:
        raise ValidationFailure("dns", f"{name} has no A or AAAA records")
    return addresses


def _addresses(target: Target, settings: ValidationSettings) -> list[str]:
    candidates = (
        [target.value]
        if target.identifier_type == "ip"
        else resolve_addresses(target.value, settings)
    )
    allowed = [a for a in candidates if settings.address_allowed(a)]
    if not allowed:
        raise ValidationFailure(
            "connection",
            f"{target.value} resolves only to addresses validation may not connect to",
        )
    return allowed


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((address, port), timeout=timeout)
    except TimeoutError:
        raise ValidationFailure(
            "connection", f"timeout connecting to {address} port {port}", transient=True
        ) from None
    except OSError as exc:
        raise ValidationFailure(
            "connection",
            f"cannot connect to {address} port {port}: {exc.strerror or type(exc).__name__}",
            transient=True,
        ) from None


# --- http-01 ---------------------------------------------------------------------------------


def validate_http01(
    target: Target, token: str, key_authorization: str, settings: ValidationSettings
) -> None:
    """GET http://<identifier>/.well-known/acme-challenge/<token> and compare the body."""
    host = f"[{target.value}]" if ":" in target.value else target.value
    url = f"http://{host}:{settings.http_port}/.well-known/acme-challenge/{token}"
    for _hop in range(settings.max_redirects + 1):
        status, location, body = _http_get(url, settings)
        if status in (301, 302, 303, 307, 308):
            if not location:
                raise ValidationFailure("incorrectResponse", f"redirect without Location at {url}")
            url = _redirect_target(url, location, settings)
            continue
        if status != 200:
            raise ValidationFailure(
                "unauthorized", f"{url} answered HTTP {status}, not 200 with the key authorization"
            )
        if len(body) > settings.max_response_bytes:
            raise ValidationFailure(
                "unauthorized", f"the response at {url} is larger than expected"
            )
        if body.strip() != key_authorization.encode():
            raise ValidationFailure(
                "incorrectResponse", f"the response at {url} is not the key authorization"
            )
        return
    raise ValidationFailure(
        "connection", f"too many redirects (more than {settings.max_redirects})"
    )


def _redirect_target(current: str, location: str, settings: ValidationSettings) -> str:
    url = urljoin(current, location)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailure("connection", f"redirect to an unsupported URL: {url[:200]}")
    default = settings.http_port if parts.scheme == "http" else 443
    allowed_ports = {settings.http_port, 80, 443, default}
    if (parts.port or default) not in allowed_ports:
        raise ValidationFailure("connection", f"redirect to a port validation does not use: {url}")
    return url


def _http_get(url: str, settings: ValidationSettings) -> tuple[int, str | None, bytes]:
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    try:
        kind = "ip" if ipaddress.ip_address(hostname) else "dns"
    except ValueError:
        kind = "dns"
    port = parts.port or (settings.http_port if parts.scheme == "http" else 443)
    last: ValidationFailure | None = None
    for address in _addresses(Target(kind, hostname), settings):
        try:
            sock = _connect(address, port, settings.timeout)
        except ValidationFailure as failure:
            last = failure
            continue
        try:
            if parts.scheme == "https":
                # RFC 8555 §8.3: the certificate of a redirect target is not checked.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(
                    sock, server_hostname=hostname if kind == "dns" else None
                )
            connection = http.client.HTTPConnection(hostname, port, timeout=settings.timeout)
            connection.sock = sock
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            host_header = f"[{hostname}]" if ":" in hostname else hostname
            connection.putheader("Host", host_header)
            connection.putheader("User-Agent", "privca-acme-validation")
            connection.putheader("Accept", "*/*")
            connection.endheaders()
            response = connection.getresponse()
            body = response.read(settings.max_response_bytes + 1)
            return response.status, response.getheader("Location"), body
        except TimeoutError:
            last = ValidationFailure("connection", f"timeout reading {url}", transient=True)
        except (OSError, http.client.HTTPException) as exc:
            last = ValidationFailure(
                "connection", f"fetching {url} failed: {type(exc).__name__}", transient=True
            )
        finally:
            sock.close()
    assert last is not None
    raise last


# --- dns-01 ----------------------------------------------------------------------------------


def dns01_value(key_authorization: str) -> str:
    return b64encode(hashlib.sha256(key_authorization.encode()).digest())


def validate_dns01(name: str, key_authorization: str, settings: ValidationSettings) -> None:
    """TXT at _acme-challenge.<name> (CNAMEs followed) must hold the key authorization digest."""
    expected = dns01_value(key_authorization)
    qname = dns.name.from_text(f"_acme-challenge.{name}")
    resolver = _resolver(settings)
    seen: list[str] = []
    for _hop in range(MAX_CNAME_HOPS):
        try:
            answer = resolver.resolve(qname, "TXT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise ValidationFailure("dns", f"no TXT record at {qname} (NXDOMAIN)") from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise ValidationFailure(
                "dns", f"DNS lookup of {qname} failed: {type(exc).__name__}", transient=True
            ) from None
        if answer.rrset is not None:
            values = [b"".join(rr.strings).decode("ascii", "replace") for rr in answer.rrset]
            if expected in values:
                return
            raise ValidationFailure(
                "unauthorized", f"the TXT record at {qname} is not the expected value"
            )
        target = _cname_in(answer.response, answer.canonical_name)
        if target is None:
            raise ValidationFailure("dns", f"no TXT record at {qname}")
        seen.append(str(qname))
        qname = target
    raise ValidationFailure("dns", f"too many CNAMEs from _acme-challenge.{name}: {seen}")


def _cname_in(response: dns.message.Message, name: dns.name.Name) -> dns.name.Name | None:
    current, moved = name, False
    for _ in range(MAX_CNAME_HOPS):
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == current:
                current = rrset[0].target
                moved = True
                break
        else:
            break
    return current if moved else None


# --- tls-alpn-01 -----------------------------------------------------------------------------


def validate_tlsalpn01(
    target: Target, key_authorization: str, settings: ValidationSettings
) -> None:
    """RFC 8737: TLS with ALPN acme-tls/1 and SNI; a certificate for exactly the identifier with
    a critical acmeIdentifier extension holding SHA-256 of the key authorization."""
    if target.identifier_type == "ip":
        sni = ipaddress.ip_address(target.value).reverse_pointer  # RFC 8738 §6
    else:
        sni = target.value
    digest = hashlib.sha256(key_authorization.encode()).digest()
    last: ValidationFailure | None = None
    for address in _addresses(target, settings):
        try:
            der, protocol = _tls_handshake(address, settings.tls_alpn_port, sni, settings.timeout)
        except ValidationFailure as failure:
            last = failure
            continue
        if protocol != ACME_TLS_ALPN:
            raise ValidationFailure("tls", f"the server did not negotiate ALPN {ACME_TLS_ALPN}")
        _check_alpn_certificate(der, target, digest)
        return
    assert last is not None
    raise last


def _tls_handshake(address: str, port: int, sni: str, timeout: float) -> tuple[bytes, str | None]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # RFC 8737 §3: the self-signed certificate is the answer
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_ALPN])
    sock = _connect(address, port, timeout)
    try:
        with context.wrap_socket(sock, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
            protocol = tls.selected_alpn_protocol()
    except TimeoutError:
        raise ValidationFailure("tls", f"TLS timeout with {address}", transient=True) from None
    except (ssl.SSLError, OSError) as exc:
        raise ValidationFailure(
            "tls", f"TLS handshake with {address} port {port} failed: {type(exc).__name__}"
        ) from None
    finally:
        sock.close()
    if not der:
        raise ValidationFailure("tls", "the server presented no certificate")
    return der, protocol


def _check_alpn_certificate(der: bytes, target: Target, digest: bytes) -> None:
    try:
        certificate = x509.load_der_x509_certificate(der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        raise ValidationFailure(
            "unauthorized", "the certificate lacks subjectAltName or acmeIdentifier"
        ) from None
    except ValueError:
        raise ValidationFailure("tls", "the certificate could not be parsed") from None
    names = list(san)
    expected: x509.GeneralName = (
        x509.IPAddress(ipaddress.ip_address(target.value))
        if target.identifier_type == "ip"
        else x509.DNSName(target.value)
    )
    if len(names) != 1 or names[0] != expected:
        raise ValidationFailure(
            "unauthorized", f"the certificate must name exactly {target.value} in subjectAltName"
        )
    if not extension.critical:
        raise ValidationFailure("unauthorized", "the acmeIdentifier extension must be critical")
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if raw != b"\x04\x20" + digest:
        raise ValidationFailure(
            "incorrectResponse", "the acmeIdentifier extension is not the key authorization digest"
        )
