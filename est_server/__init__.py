"""EST server (RFC 7030 with RFC 8951): labels, Basic and TLS client certificate authentication,
serverkeygen and manual approval, as a thin front end over the core (see docs/est.md)."""
