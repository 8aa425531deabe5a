"""privca core: configuration, storage, issuers, policy, issuance, revocation, audit, jobs."""
