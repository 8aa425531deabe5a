# ruff: noqa: S303 - RFC 5019 clients name certificates by SHA-1 CertIDs
"""Per-operation cost of ocsp.messages next to asn1crypto and cryptography: the evidence for (or
against) keeping a hand-written OCSP parser and encoder on the responder's hot path.

    /tmp/venv/bin/python benchmarks/ocsp_encoding.py [--runs 7] [--seconds 0.2]

(a) Parse a typical request (one SHA-1 CertID, as RFC 5019 clients send; and the same with an
    RFC 8954 nonce) and read what the responder needs: hash algorithm, issuerNameHash,
    issuerKeyHash, serialNumber, nonce, and (ours and asn1crypto) the CertID's DER to echo.
(b) Build a typical successful OCSPResponse (one SingleResponse "good", responderID byKey, with
    nonce) around a fixed signature, so signing is excluded: ocsp.messages vs asn1crypto's
    ResponseData/BasicOCSPResponse vs cryptography's OCSPResponseBuilder driven with a key whose
    sign() returns that signature. Also the tbsResponseData alone for ours and asn1crypto.
Each figure is the median over --runs runs of a loop lasting about --seconds; the whole
benchmark is bounded by a deadline. Every reference output is first checked to be the same DER
as ours (the tests in tests/unit/ocsp/test_reference.py do that exhaustively).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ocsp import messages
from tests.support.software_ca import self_signed_ca

DEADLINE_SECONDS = 120.0
NONCE = b"\x5a" * 32
SERIAL = 0x3A9F_1C2B_77E0_4D11_9B6C_0F3E_22A1_8C5D


class CaptureKey(ec.EllipticCurvePrivateKey):
    """An EC key whose signature is fixed, so cryptography's builder is timed without signing."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, signature: bytes) -> None:
        self._key = key
        self._signature = signature

    def sign(self, data, signature_algorithm):  # type: ignore[override]
        return self._signature

    def public_key(self):
        return self._key.public_key()

    @property
    def curve(self):
        return self._key.curve

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def exchange(self, algorithm, peer_public_key):  # type: ignore[override]
        raise NotImplementedError

    def private_numbers(self):
        raise NotImplementedError

    def private_bytes(self, encoding, format, encryption_algorithm):
        raise NotImplementedError

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def make_issuer() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return self_signed_ca("Benchmark Issuing CA")


def per_operation(operation: Callable[[], object], runs: int, seconds: float, stop: float) -> float:
    """Median seconds per call over `runs` loops of about `seconds` each."""
    operation()
    batch = 1
    while True:  # size a batch to about a hundredth of a run
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        if time.perf_counter() - start > seconds / 100 or batch >= 1 << 20:
            break
        batch *= 2
    results = []
    for _ in range(runs):
        if time.perf_counter() > stop:
            raise SystemExit("deadline exceeded")
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(batch):
                operation()
            calls += batch
        results.append(elapsed / calls)
    return statistics.median(results)


def request_benchmarks(certificate: x509.Certificate) -> dict[str, Callable[[], object]]:
    plain = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(*_hashes(certificate), SERIAL, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    with_nonce = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(*_hashes(certificate), SERIAL, hashes.SHA1())
        .add_extension(x509.OCSPNonce(NONCE), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )

    def ours(der: bytes) -> Callable[[], object]:
        def run() -> object:
            request = messages.parse_request(der, max_cert_ids=16)
            cert_id = request.cert_ids[0]
            return (
                cert_id.hash_oid,
                cert_id.name_hash,
                cert_id.key_hash,
                cert_id.serial,
                request.nonce,
            )

        return run

    def with_asn1crypto(der: bytes) -> Callable[[], object]:
        def run() -> object:
            tbs = asn1_ocsp.OCSPRequest.load(der, strict=True)["tbs_request"]
            (request,) = tbs["request_list"]
            cert_id = request["req_cert"]
            nonce = None
            extensions = tbs["request_extensions"]
            if extensions.native:
                for extension in extensions:
                    if extension["extn_id"].native == "nonce":
                        nonce = extension["extn_value"].contents
            return (
                cert_id["hash_algorithm"]["algorithm"].contents,
                cert_id["issuer_name_hash"].native,
                cert_id["issuer_key_hash"].native,
                cert_id["serial_number"].native,
                cert_id.dump(),
                nonce,
            )

        return run

    def with_cryptography(der: bytes) -> Callable[[], object]:
        def run() -> object:
            request = ocsp.load_der_ocsp_request(der)
            nonce = None
            for extension in request.extensions:
                if isinstance(extension.value, x509.OCSPNonce):
                    nonce = extension.value.nonce
            return (
                request.hash_algorithm,
                request.issuer_name_hash,
                request.issuer_key_hash,
                request.serial_number,
                nonce,
            )

        return run

    # The readers agree before they are timed.
    for der in (plain, with_nonce):
        ours_fields = ours(der)()
        asn1_fields = with_asn1crypto(der)()
        assert ours_fields[1:4] == asn1_fields[1:4] and ours_fields[4] == asn1_fields[5]
        assert messages.parse_request(der, max_cert_ids=16).cert_ids[0].der == asn1_fields[4]
    return {
        "parse request, ocsp.messages": ours(plain),
        "parse request, asn1crypto": with_asn1crypto(plain),
        "parse request, cryptography": with_cryptography(plain),
        "parse request+nonce, ocsp.messages": ours(with_nonce),
        "parse request+nonce, asn1crypto": with_asn1crypto(with_nonce),
        "parse request+nonce, cryptography": with_cryptography(with_nonce),
    }


def _hashes(certificate: x509.Certificate) -> tuple[bytes, bytes]:
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    return (
        hashlib.sha1(parsed.subject.dump()).digest(),  # noqa: S324 - RFC 5019 CertID
        hashlib.sha1(bytes(parsed.public_key["public_key"])).digest(),  # noqa: S324
    )


def response_benchmarks(
    certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> dict[str, Callable[[], object]]:
    name_hash, key_hash = _hashes(certificate)
    responder_key_hash = hashlib.sha1(  # noqa: S324 - RFC 6960 ResponderID byKey
        bytes(
            asn1_x509.Certificate.load(
                certificate.public_bytes(serialization.Encoding.DER)
            ).public_key["public_key"]
        )
    ).digest()
    now = datetime.now(UTC).replace(microsecond=0)
    next_update = now + timedelta(days=4)
    nonce_value = asn1_core.OctetString(NONCE).dump()
    cert_id_der = messages.encode_cert_id(messages.OID_SHA1, name_hash, key_hash, SERIAL)
    algorithm = messages.SIGNATURE_ALGORITHMS["ecdsa-with-SHA256"]
    signature = key.sign(b"fixed", ec.ECDSA(hashes.SHA256()))
    good = messages.SingleStatus(messages.GOOD)

    def ours_tbs() -> bytes:
        single = messages.single_response(cert_id_der, good, now, next_update)
        return messages.response_data(responder_key_hash, now, [single], nonce=nonce_value)

    def ours_response() -> bytes:
        return messages.ocsp_response(ours_tbs(), algorithm, signature)

    def asn1_tbs_value() -> asn1_ocsp.ResponseData:
        cert_id = asn1_ocsp.CertId(
            {
                "hash_algorithm": {"algorithm": "sha1", "parameters": asn1_core.Null()},
                "issuer_name_hash": name_hash,
                "issuer_key_hash": key_hash,
                "serial_number": SERIAL,
            }
        )
        return asn1_ocsp.ResponseData(
            {
                "responder_id": asn1_ocsp.ResponderId(name="by_key", value=responder_key_hash),
                "produced_at": now,
                "responses": [
                    {
                        "cert_id": cert_id,
                        "cert_status": asn1_ocsp.CertStatus(name="good", value=asn1_core.Null()),
                        "this_update": now,
                        "next_update": next_update,
                    }
                ],
                "response_extensions": [
                    {"extn_id": "nonce", "extn_value": asn1_core.OctetString(NONCE)}
                ],
            }
        )

    def asn1_tbs() -> bytes:
        return asn1_tbs_value().dump()

    def asn1_response() -> bytes:
        basic = asn1_ocsp.BasicOCSPResponse(
            {
                "tbs_response_data": asn1_tbs_value(),
                "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                "signature": signature,
            }
        )
        return asn1_ocsp.OCSPResponse(
            {
                "response_status": "successful",
                "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
            }
        ).dump()

    capture = CaptureKey(key, signature)

    def cryptography_response() -> bytes:
        return (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                name_hash,
                key_hash,
                SERIAL,
                hashes.SHA1(),
                ocsp.OCSPCertStatus.GOOD,
                now,
                next_update,
                None,
                None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, certificate)
            .add_extension(x509.OCSPNonce(NONCE), critical=False)
            .sign(capture, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )

    # The builders agree before they are timed (cryptography stamps its own producedAt, so
    # compare with ours built at that instant).
    assert ours_tbs() == asn1_tbs() and ours_response() == asn1_response()
    der = cryptography_response()
    built = ocsp.load_der_ocsp_response(der)
    single = messages.single_response(cert_id_der, good, now, next_update)
    tbs = messages.response_data(
        responder_key_hash, built.produced_at_utc, [single], nonce=nonce_value
    )
    assert tbs == built.tbs_response_bytes
    assert messages.ocsp_response(tbs, algorithm, built.signature) == der
    return {
        "build tbsResponseData, ocsp.messages": ours_tbs,
        "build tbsResponseData, asn1crypto": asn1_tbs,
        "build OCSPResponse, ocsp.messages": ours_response,
        "build OCSPResponse, asn1crypto": asn1_response,
        "build OCSPResponse, cryptography": cryptography_response,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one run")
    args = parser.parse_args()
    stop = time.perf_counter() + DEADLINE_SECONDS
    certificate, key = make_issuer()
    groups = [request_benchmarks(certificate), response_benchmarks(certificate, key)]
    print(f"median of {args.runs} runs of ~{args.seconds:.2f} s each; ratio = library / ours")
    print(f"{'operation':<44} {'µs/op':>9} {'ratio':>7}")
    for group in groups:
        baseline: float | None = None
        for label, operation in group.items():
            seconds = per_operation(operation, args.runs, args.seconds, stop)
            if label.endswith("ocsp.messages"):
                baseline = seconds
                ratio = ""
            else:
                ratio = f"{seconds / baseline:6.1f}x" if baseline else ""
            print(f"{label:<44} {seconds * 1e6:9.2f} {ratio:>7}", flush=True)


if __name__ == "__main__":
    main()
