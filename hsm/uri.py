"""RFC 7512 PKCS#11 URIs naming a private key. They carry no PIN, so they are safe to log."""

from __future__ import annotations

from urllib.parse import quote

# RFC 7512 §2.3: pk11-pchar = unreserved / pk11-res-avail / pct-encoded, where
# pk11-res-avail = ":" / "[" / "]" / "@" / "!" / "$" / "'" / "(" / ")" / "*" / "+" / "," / "=".
# quote() already leaves ALPHA, DIGIT and "-._~" (unreserved) alone.
_PK11_RES_AVAIL = ":[]@!$'()*+,="


def _pchar(value: str) -> str:
    return quote(value.encode("utf-8"), safe=_PK11_RES_AVAIL)


def private_key_uri(token_label: str, key_label: str, key_id: bytes) -> str:
    """`pkcs11:token=…;object=…;id=…;type=private`, with the id percent-encoded byte by byte."""
    encoded_id = "".join(f"%{byte:02x}" for byte in key_id)
    return (
        f"pkcs11:token={_pchar(token_label)};object={_pchar(key_label)};"
        f"id={encoded_id};type=private"
    )


def key_label(uri: str) -> str:
    """The `object` (CKA_LABEL) attribute of a `pkcs11:` URI; ValueError if it has none."""
    from urllib.parse import unquote

    if not uri.startswith("pkcs11:"):
        raise ValueError("not a pkcs11: URI")
    path = uri[len("pkcs11:") :].split("?", 1)[0]
    for attribute in path.split(";"):
        name, _, value = attribute.partition("=")
        if name == "object":
            return unquote(value)
    raise ValueError("the pkcs11: URI names no object")
