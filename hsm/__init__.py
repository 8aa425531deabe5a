"""PKCS#11 keys and signing. Knows tokens, sessions and keys; never what a certificate is."""
