"""RFC 6960 messages on the wire: OCSPRequest parsing and OCSPResponse encoding, in plain DER.

The request parser is written out by hand: cryptography refuses requests with more than one
CertID and asn1crypto costs tens of microseconds per request on the hot path. It is strict about
structure (definite lengths, expected tags, nothing trailing) and raises Malformed for anything
else, which the responder answers with malformedRequest. Responses are assembled the same way,
so one signature covers any number of SingleResponses and the pre-signed bytes are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# OCSPResponseStatus (RFC 6960 §4.2.1)
SUCCESSFUL = 0
MALFORMED_REQUEST = 1
INTERNAL_ERROR = 2
TRY_LATER = 3
UNAUTHORIZED = 6

# Content octets of the OIDs we compare against.
OID_SHA1 = bytes.fromhex("2b0e03021a")
OID_SHA256 = bytes.fromhex("608648016503040201")
OID_SHA384 = bytes.fromhex("608648016503040202")
OID_SHA512 = bytes.fromhex("608648016503040203")
HASH_NAMES = {OID_SHA1: "sha1", OID_SHA256: "sha256", OID_SHA384: "sha384", OID_SHA512: "sha512"}
OID_NONCE = bytes.fromhex("2b0601050507300102")
_OID_BASIC = bytes.fromhex("06092b0601050507300101")
_EXTENDED_REVOKE = bytes.fromhex("300f06092b060105050730010904020500")  # value NULL

# AlgorithmIdentifier DER per hsm.signer algorithm name.
SIGNATURE_ALGORITHMS = {
    "sha256WithRSAEncryption": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "sha384WithRSAEncryption": bytes.fromhex("300d06092a864886f70d01010c0500"),
    "ecdsa-with-SHA256": bytes.fromhex("300a06082a8648ce3d040302"),
    "ecdsa-with-SHA384": bytes.fromhex("300a06082a8648ce3d040303"),
    "Ed25519": bytes.fromhex("300506032b6570"),
}

MAX_NONCE = 32  # RFC 8954 §2.1: longer nonces may be ignored (answered without a nonce)


class Malformed(ValueError):
    """The request is not a DER OCSPRequest we can read."""


# -- DER reading --------------------------------------------------------------------------------


def _read(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, element end) of the element at offset, inside data[:end]."""
    if offset + 2 > end:
        raise Malformed("truncated")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise Malformed("high tag number")
    first = data[offset + 1]
    if first < 0x80:
        start = offset + 2
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise Malformed("indefinite or oversized length")
        start = offset + 2 + count
        if start > end:
            raise Malformed("truncated length")
        length = int.from_bytes(data[offset + 2 : start], "big")
        # X.690 §10.1: DER uses the fewest length octets. The CertID is echoed into the signed
        # response byte for byte, so a padded length there would make our response non-DER.
        if length < 0x80 or data[offset + 2] == 0:
            raise Malformed("non-minimal length")
    stop = start + length
    if stop > end:
        raise Malformed("truncated content")
    return tag, start, stop


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element offset, content start, end) for each element in data[start:end]."""
    out = []
    offset = start
    while offset < end:
        tag, content, stop = _read(data, offset, end)
        out.append((tag, offset, content, stop))
        offset = stop
    return out


@dataclass(frozen=True)
class CertID:
    """One CertID as sent; `der` is echoed verbatim in the answer (RFC 6960 §4.2.1)."""

    hash_oid: bytes
    name_hash: bytes
    key_hash: bytes
    serial: int
    der: bytes

    @property
    def hash_name(self) -> str | None:
        return HASH_NAMES.get(self.hash_oid)


@dataclass(frozen=True)
class OCSPRequest:
    cert_ids: tuple[CertID, ...]
    nonce: bytes | None  # the nonce extension's extnValue octets, echoed as they came


def _cert_id(data: bytes, offset: int, start: int, end: int) -> CertID:
    parts = _children(data, start, end)
    if len(parts) != 4 or [p[0] for p in parts] != [0x30, 0x04, 0x04, 0x02]:
        raise Malformed("CertID")
    algorithm = _children(data, parts[0][2], parts[0][3])
    if not algorithm or algorithm[0][0] != 0x06 or len(algorithm) > 2:
        raise Malformed("hashAlgorithm")
    # RFC 5754 §2: SHA parameters are absent or NULL; anything else would be echoed as sent.
    if len(algorithm) == 2 and data[algorithm[1][1] : algorithm[1][3]] != b"\x05\x00":
        raise Malformed("hashAlgorithm parameters")
    serial_start, serial_end = parts[3][2], parts[3][3]
    if serial_end == serial_start or serial_end - serial_start > 21:
        raise Malformed("serialNumber")
    # X.690 §8.3.2: no redundant leading 0x00/0xFF octet (the CertID is echoed, see _read).
    if serial_end - serial_start > 1 and (
        (data[serial_start] == 0x00 and data[serial_start + 1] < 0x80)
        or (data[serial_start] == 0xFF and data[serial_start + 1] >= 0x80)
    ):
        raise Malformed("serialNumber")
    return CertID(
        hash_oid=data[algorithm[0][2] : algorithm[0][3]],
        name_hash=data[parts[1][2] : parts[1][3]],
        key_hash=data[parts[2][2] : parts[2][3]],
        serial=int.from_bytes(data[serial_start:serial_end], "big", signed=True),
        der=data[offset:end],
    )


def _nonce(data: bytes, start: int, end: int) -> bytes | None:
    (extensions,) = _expect(data, start, end, 0x30)
    nonce = None
    # Every Extension is checked, also after the nonce: a request is well-formed or it is not.
    for tag, _offset, content, stop in _children(data, extensions[0], extensions[1]):
        if tag != 0x30:
            raise Malformed("Extension")
        fields = _children(data, content, stop)
        if len(fields) not in (2, 3) or fields[0][0] != 0x06 or fields[-1][0] != 0x04:
            raise Malformed("Extension")
        if len(fields) == 3 and (fields[1][0] != 0x01 or fields[1][3] - fields[1][2] != 1):
            raise Malformed("Extension critical")
        if data[fields[0][2] : fields[0][3]] == OID_NONCE:
            if nonce is not None:  # RFC 5280 §4.2: no extension appears twice
                raise Malformed("duplicate nonce")
            nonce = data[fields[-1][2] : fields[-1][3]]
    return nonce


def _expect(data: bytes, start: int, end: int, tag: int) -> list[tuple[int, int]]:
    children = _children(data, start, end)
    if len(children) != 1 or children[0][0] != tag:
        raise Malformed("unexpected element")
    return [(children[0][2], children[0][3])]


def parse_request(data: bytes, *, max_cert_ids: int) -> OCSPRequest:
    """Parse a DER OCSPRequest; raises Malformed (also for more than max_cert_ids CertIDs)."""
    tag, start, end = _read(data, 0, len(data))
    if tag != 0x30 or end != len(data):
        raise Malformed("OCSPRequest")
    top = _children(data, start, end)
    if not top or top[0][0] != 0x30 or len(top) > 2 or (len(top) == 2 and top[1][0] != 0xA0):
        raise Malformed("OCSPRequest")
    fields = _children(data, top[0][2], top[0][3])
    index = 0
    if index < len(fields) and fields[index][0] == 0xA0:  # version [0], must be v1 (0)
        (version,) = _expect(data, fields[index][2], fields[index][3], 0x02)
        if data[version[0] : version[1]] != b"\x00":
            raise Malformed("version")
        index += 1
    if index < len(fields) and fields[index][0] == 0xA1:  # requestorName, not used
        index += 1
    if index >= len(fields) or fields[index][0] != 0x30:
        raise Malformed("requestList")
    requests = _children(data, fields[index][2], fields[index][3])
    index += 1
    nonce = None
    if index < len(fields) and fields[index][0] == 0xA2:
        nonce = _nonce(data, fields[index][2], fields[index][3])
        index += 1
    if index != len(fields):
        raise Malformed("TBSRequest")
    if not requests or len(requests) > max_cert_ids:
        raise Malformed("requestList size")
    cert_ids = []
    for tag, _offset, content, stop in requests:
        if tag != 0x30:
            raise Malformed("Request")
        parts = _children(data, content, stop)
        if not parts or parts[0][0] != 0x30 or len(parts) > 2:
            raise Malformed("Request")
        if len(parts) == 2 and parts[1][0] != 0xA0:
            raise Malformed("singleRequestExtensions")
        cert_ids.append(_cert_id(data, parts[0][1], parts[0][2], parts[0][3]))
    return OCSPRequest(tuple(cert_ids), nonce)


def encode_request(cert_id_der: bytes) -> bytes:
    """The smallest OCSPRequest for one CertID, as RFC 5019 clients send it."""
    request = tlv(0x30, cert_id_der)
    return tlv(0x30, tlv(0x30, tlv(0x30, request)))


def encode_cert_id(hash_oid: bytes, name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """A CertID with NULL hash parameters (the form OpenSSL and most clients send)."""
    algorithm = tlv(0x30, tlv(0x06, hash_oid) + b"\x05\x00")
    return tlv(0x30, algorithm + tlv(0x04, name_hash) + tlv(0x04, key_hash) + integer(serial))


# -- DER writing --------------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def integer(value: int) -> bytes:
    size = (value.bit_length() + 8) // 8 if value >= 0 else ((-value - 1).bit_length() + 8) // 8
    return tlv(0x02, value.to_bytes(max(size, 1), "big", signed=True))


def generalized_time(value: datetime) -> bytes:
    # RFC 5280 §4.1.2.5.2 form (no fractions), which RFC 6960 uses for every time.
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )


GOOD = "good"
REVOKED = "revoked"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class SingleStatus:
    """The status of one CertID: good, revoked (with time and reason) or unknown."""

    status: str
    revoked_at: datetime | None = None
    reason: int | None = None


def single_response(
    cert_id_der: bytes, status: SingleStatus, this_update: datetime, next_update: datetime
) -> bytes:
    if status.status == GOOD:
        cert_status = b"\x80\x00"
    elif status.status == UNKNOWN:
        cert_status = b"\x82\x00"
    else:
        assert status.revoked_at is not None
        info = generalized_time(status.revoked_at)
        if status.reason:  # RFC 5280 §5.3.1: unspecified is better left out
            info += b"\xa0\x03\x0a\x01" + bytes((status.reason,))
        cert_status = tlv(0xA1, info)
    return tlv(
        0x30,
        cert_id_der
        + cert_status
        + generalized_time(this_update)
        + tlv(0xA0, generalized_time(next_update)),
    )


def response_data(
    responder_key_hash: bytes,
    produced_at: datetime,
    singles: list[bytes],
    *,
    nonce: bytes | None = None,
    extended_revoke: bool = False,
) -> bytes:
    """ResponseData (v1, responderID byKey) over the given SingleResponses."""
    body = tlv(0xA2, tlv(0x04, responder_key_hash)) + generalized_time(produced_at)
    body += tlv(0x30, b"".join(singles))
    extensions = b""
    if nonce is not None:
        extensions += tlv(0x30, tlv(0x06, OID_NONCE) + tlv(0x04, nonce))
    if extended_revoke:
        extensions += _EXTENDED_REVOKE
    if extensions:
        body += tlv(0xA1, tlv(0x30, extensions))
    return tlv(0x30, body)


def ocsp_response(
    tbs: bytes, algorithm: bytes, signature: bytes, certificates: tuple[bytes, ...] = ()
) -> bytes:
    """A successful OCSPResponse around a signed BasicOCSPResponse."""
    basic = tbs + algorithm + tlv(0x03, b"\x00" + signature)
    if certificates:
        basic += tlv(0xA0, tlv(0x30, b"".join(certificates)))
    response_bytes = tlv(0x30, _OID_BASIC + tlv(0x04, tlv(0x30, basic)))
    return tlv(0x30, b"\x0a\x01\x00" + tlv(0xA0, response_bytes))


def error_response(status: int) -> bytes:
    """An unsuccessful OCSPResponse: only the status (RFC 6960 §4.2.1)."""
    return bytes((0x30, 0x03, 0x0A, 0x01, status))
