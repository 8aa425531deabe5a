"""ACME server (RFC 8555 with RFC 8737 tls-alpn-01, RFC 8738 IP identifiers, RFC 9773 ARI, EAB and
profiles), as a thin front end over the core (see docs/acme.md)."""
