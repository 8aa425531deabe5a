"""Identifier syntax: what a valid DNS name, IP address, email address or URI SAN is, and the
normal form the policy engine compares (RFC 5280 §4.2.1.6, RFC 1034, RFC 5322, RFC 3986).

Each `*_problem` function returns None for a valid value or a phrase a requester can act on
("is not an IP address", "its local part is longer than 64 characters").
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 1034 §3.5 / RFC 5280 §4.2.1.6 preferred name syntax, lower-cased; "*" only as a whole
# leftmost label.
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"(?:\*\.)?(?:{LABEL}\.)*{LABEL}")
LDH_LABEL = re.compile(LABEL)
# RFC 5322 §3.2.3 dot-atom: an rfc822Name is an IA5String, so no quoted or UTF-8 local parts.
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
LOCAL_PART = re.compile(rf"{ATEXT}(?:\.{ATEXT})*")
URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986 §3.1
BROADCAST4 = ipaddress.IPv4Address("255.255.255.255")


def normalise_dns(value: str) -> str:
    name = value.lower()
    return name[:-1] if name.endswith(".") else name


def dns_name_problem(name: str) -> str | None:
    """Why a lower-cased name without trailing dot is not a valid host name, or None."""
    if len(name) > 253:
        return "it is longer than 253 characters"
    if DNS_NAME.fullmatch(name):
        if name.rpartition(".")[2].isdigit():
            return "its last label is all digits (an IP address belongs in an ip identifier)"
        if name.startswith("*.") and "." not in name[2:]:
            return "a wildcard needs at least two labels after it"
        return None
    if not name:
        return "it is empty"
    if name == "*":
        return "a wildcard needs a domain after it"
    for index, label in enumerate(name.split(".")):
        if not label:
            return "it has an empty label"
        if "*" in label:
            if index == 0 and label == "*":
                continue
            return "a wildcard must be the whole leftmost label"
        if len(label) > 63:
            return f'label "{label[:16]}…" is longer than 63 characters'
        if label.startswith("-") or label.endswith("-"):
            return f'label "{label}" starts or ends with a hyphen'
        if not LDH_LABEL.fullmatch(label):
            return f'label "{label}" has characters other than letters, digits and hyphens'
    return "it is not a valid host name"


def parse_ip(value: str) -> tuple[IPAddress | None, str | None]:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None, "is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None, "has a zone index, which a certificate cannot carry"
    if address.is_unspecified or address.is_multicast or address == BROADCAST4:
        return None, "is not a unicast host address"
    return address, None


def email_problem(value: str) -> str | None:
    if not value.isascii():
        return "internationalised (UTF-8) addresses are not supported"
    if value.count("@") != 1:
        return "it must have exactly one @"
    local, _, domain = value.partition("@")
    if not local:
        return "it has no local part"
    if len(local) > 64:
        return "its local part is longer than 64 characters"
    if not LOCAL_PART.fullmatch(local):
        return "its local part is not a plain dot-atom (quoted local parts are not supported)"
    if not domain:
        return "it has no domain"
    if domain.startswith("*"):
        return "its domain cannot be a wildcard"
    problem = dns_name_problem(domain.lower())
    return f"its domain is not valid: {problem}" if problem else None


def normalise_email(value: str) -> str:
    # RFC 5321 §2.4: the local part may be case-sensitive; the domain is not.
    local, _, domain = value.partition("@")
    return f"{local}@{domain.lower()}"


def uri_problem(value: str) -> str | None:
    if not value.isascii():
        return "it has characters outside ASCII (percent-encode them)"
    if any(c <= " " or c == "\x7f" for c in value):
        return "it contains spaces or control characters"
    scheme, colon, rest = value.partition(":")
    if not colon or not URI_SCHEME.fullmatch(scheme):
        return "it has no scheme"
    if not rest:
        return "it has nothing after the scheme"
    path = rest
    if rest.startswith("//"):
        authority, path = split_authority(rest[2:])
        # RFC 5280 §4.2.1.6: a URI with an authority names a host.
        if not authority.rpartition("@")[2].split(":", 1)[0]:
            return "its authority has no host"
    path = path.split("?", 1)[0].split("#", 1)[0]
    # Dot segments would let a name escape a prefix rule ("…/prod/../admin").
    for segment in path.split("/"):
        if segment.lower().replace("%2e", ".") in (".", ".."):
            return 'its path has "." or ".." segments'
    return None


def split_authority(after_slashes: str) -> tuple[str, str]:
    for index, char in enumerate(after_slashes):
        if char in "/?#":
            return after_slashes[:index], after_slashes[index:]
    return after_slashes, ""


def normalise_uri(value: str) -> str:
    # RFC 3986 §6.2.2.1: scheme and host are case-insensitive; the rest is compared as written.
    scheme, _, rest = value.partition(":")
    if rest.startswith("//"):
        authority, remainder = split_authority(rest[2:])
        return f"{scheme.lower()}://{authority.lower()}{remainder}"
    return f"{scheme.lower()}:{rest}"
