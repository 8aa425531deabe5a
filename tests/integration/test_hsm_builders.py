"""cryptography's X.509 builders signing through a token key (`HSMSigner.as_private_key`)."""

from __future__ import annotations

import copy
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from hsm import HSMError, HSMSigner, KeyNotExportable
from hsm.signer import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, ED25519, SHA256_WITH_RSA
from tests.integration.hsm_fixtures import SoftHSMToken, softhsm_token  # noqa: F401
from tests.integration.test_hsm_token import generate_or_skip

pytestmark = pytest.mark.integration

SIGNATURE_OIDS = {
    SHA256_WITH_RSA: SignatureAlgorithmOID.RSA_WITH_SHA256,
    ECDSA_WITH_SHA256: SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    ECDSA_WITH_SHA384: SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    ED25519: SignatureAlgorithmOID.ED25519,
}
NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def self_signed(signer: HSMSigner) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"privca test {signer.key_type}")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer.as_private_key(), signer.hash_algorithm)
    )


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256", "ec-p384", "ed25519"])
def test_certificate_builder_signs_with_the_token_key(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
) -> None:
    signer = generate_or_skip(softhsm_token.token(), key_type, "root")

    certificate = self_signed(signer)

    certificate.verify_directly_issued_by(certificate)
    assert certificate.public_key() == signer.public_key
    assert certificate.signature_algorithm_oid == SIGNATURE_OIDS[signer.algorithm]


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256"])
def test_crl_builder_signs_with_the_token_key(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
) -> None:
    signer = softhsm_token.token().generate_key(key_type, "root")
    issuer = self_signed(signer)
    revoked = x509.RevokedCertificateBuilder().serial_number(1234).revocation_date(NOW).build()

    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW)
        .next_update(NOW + datetime.timedelta(days=1))
        .add_revoked_certificate(revoked)
        .sign(signer.as_private_key(), signer.hash_algorithm)
    )

    assert crl.is_signature_valid(signer.public_key)


def test_adapter_refuses_other_algorithms_and_key_material(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    token = softhsm_token.token()
    rsa_key = token.generate_key("rsa-2048", "rsa").as_private_key()
    ec_key = token.generate_key("ec-p256", "ec").as_private_key()

    with pytest.raises(HSMError, match=r"PKCS#1 v1\.5"):
        rsa_key.sign(
            b"data",
            padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH),
            hashes.SHA256(),
        )
    with pytest.raises(HSMError, match="sha384"):
        rsa_key.sign(b"data", padding.PKCS1v15(), hashes.SHA384())
    with pytest.raises(HSMError, match="sha384"):
        ec_key.sign(b"data", ec.ECDSA(hashes.SHA384()))
    with pytest.raises(KeyNotExportable):
        rsa_key.private_numbers()
    with pytest.raises(KeyNotExportable):
        ec_key.private_numbers()
    assert copy.copy(ec_key) is ec_key
    assert copy.deepcopy(rsa_key) is rsa_key
