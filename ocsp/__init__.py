"""OCSP responder (RFC 6960, RFC 5019 GET and caching, RFC 8954 nonces): pre-signed responses,
delegated responder certificates, export for static serving (see docs/revocation.md)."""
