"""Challenge validation as a persisted job (`acme_validate`), never inside the client's request.

The challenge is `processing` while its job is queued or running. A transient failure (timeout,
refused connection, SERVFAIL) raises RetryLater until `validation.attempts` is used up; then, or
on a wrong answer, the challenge, its authorization and their orders become invalid. Success
makes the authorization valid and every order whose authorizations are all valid `ready`.

With `validation.immediate` (the default) the job is written already leased to the process that
queued it, whose small pool of validator threads (`ValidationWaker`) runs it right after the
commit: clients do not wait for a runner's next poll, and no transaction is spent claiming it.
Retries go back to the queue, where any process's job runner takes them; so does the job of a
process that died before finishing it, once its lease expires. Without `immediate`, jobs are
queued for the runners from the start.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from acme_server import ratelimits
from acme_server.challenges import (
    Target,
    ValidationFailure,
    validate_dns01,
    validate_http01,
    validate_tlsalpn01,
)
from acme_server.context import ACMEContext
from acme_server.jws import key_authorization
from acme_server.orders import VALIDATE_JOB, refresh_orders
from acme_server.problems import ERROR_PREFIX, STATUS
from acme_server.storage import (
    AUTHORIZATION_VALID,
    CHALLENGE_AND_AUTHORIZATION_FOR_UPDATE,
    CHALLENGE_VALID,
    AccountRow,
    AuthorizationRow,
    ChallengeRow,
)
from ca.jobs import COMPLETED, Job, JobRunner, RetryLater, complete
from ca.storage.bulk import execute_statement, fetch_rows

log = logging.getLogger("privca.acme.validation")


def run_validation(acme: ACMEContext, job: Job) -> object:
    """The job handler: validate one challenge and record the outcome (completing the job in
    the same transaction)."""
    payload = job.payload
    challenge_id = payload.get("challenge")
    if job.attempts == 1 and "token" in payload:
        kind, token, thumbprint = payload["type"], payload["token"], payload["thumbprint"]
        target = Target(*payload["identifier"])
    else:
        # A retry (the authorization may have been deactivated meanwhile) or an older payload.
        with acme.core.database.read() as session:
            challenge = session.get(ChallengeRow, challenge_id)
            if challenge is None or challenge.status != "processing":
                return None
            authz = session.get(AuthorizationRow, challenge.authorization_id)
            account = session.get(AccountRow, authz.account_id) if authz else None
            if authz is None or account is None:
                return None
            token, kind = challenge.token, challenge.type
            target = Target(authz.identifier_type, authz.identifier_value)
            thumbprint = account.key_thumbprint
    settings = acme.settings.validation
    key_auth = key_authorization(token, thumbprint)
    try:
        if kind == "http-01":
            validate_http01(target, token, key_auth, settings)
        elif kind == "dns-01":
            validate_dns01(target.value, key_auth, settings)
        elif kind == "tls-alpn-01":
            validate_tlsalpn01(target, key_auth, settings)
        else:
            raise ValidationFailure("malformed", f"unknown challenge type {kind}")
    except ValidationFailure as failure:
        if failure.transient and job.attempts < settings.attempts:
            raise RetryLater(failure.detail) from None
        return _record(acme, job, challenge_id, failure.problem, failure.detail)
    except Exception:
        log.exception("validation of challenge %s failed unexpectedly", challenge_id)
        return _record(acme, job, challenge_id, "serverInternal", "validation failed on the server")
    return _record(acme, job, challenge_id, None, None)


def _record(
    acme: ACMEContext, job: Job, challenge_id: int, problem: str | None, detail: str | None
) -> object:
    """Write the outcome and complete the job in one transaction; returns the handler result."""
    core = acme.core
    now = core.now()
    with core.database.write() as session:
        if problem is None:
            # Core statements (below SQLAlchemy's execution machinery on PostgreSQL): the ORM's
            # loading and unit of work cost more than the UPDATEs.
            connection = session.connection()
            changed = fetch_rows(
                connection, CHALLENGE_VALID, {"challenge_id": challenge_id, "at": now}
            )
            if not changed:
                return None  # no longer processing (another attempt recorded it)
            authorization_id = changed[0][0]
            execute_statement(
                connection,
                AUTHORIZATION_VALID,
                {
                    "authorization_id": authorization_id,
                    "at": now,
                    "valid_until": now + timedelta(seconds=acme.settings.authorization_lifetime),
                },
            )
        else:
            pair = session.execute(
                CHALLENGE_AND_AUTHORIZATION_FOR_UPDATE, {"id": challenge_id}
            ).first()
            if pair is None or pair[0].status != "processing":
                return None
            challenge, authz = pair
            identifier = {"type": authz.identifier_type, "value": authz.identifier_value}
            authorization_id = authz.id
            document = {
                "type": ERROR_PREFIX + problem,
                "detail": detail,
                "status": STATUS.get(problem, 400),
                "identifier": identifier,
            }
            challenge.status = "invalid"
            challenge.error = json.dumps(document)
            if authz.status == "pending":
                authz.status = "invalid"
            account = session.get(AccountRow, authz.account_id)
            name = (
                f"{authz.identifier_type}:{'*.' if authz.wildcard else ''}{authz.identifier_value}"
            )
            if account is not None:
                ratelimits.record(
                    session,
                    acme.settings.rate_limits,
                    "failed_validations",
                    [f"{account.public_id}:{name}"],
                    now,
                )
        session.flush()
        refresh_orders(session, authorization_id, now)
        completed = complete(session, job, now)
    log.info(
        "challenge validated" if problem is None else "challenge failed",
        extra={"challenge": challenge_id, "problem": problem},
    )
    return COMPLETED if completed else None


class ValidationWaker:
    """Runs, in this process's validator threads, the validation jobs leased to it when queued."""

    def __init__(self, acme: ACMEContext, workers: int) -> None:
        self.acme = acme
        # The app is created in each worker after the fork, so the pid is this worker's.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:acme-validate"
        self._pool: ThreadPoolExecutor | None = None
        self._workers = workers
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self._workers, thread_name_prefix="acme-validate"
                    )
        self._pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        runner = JobRunner(
            self.acme.core, {VALIDATE_JOB: self.acme.core.job_handlers[VALIDATE_JOB]}
        )
        try:
            runner.run_claimed(job)
        except Exception:
            log.exception("validator thread error")
