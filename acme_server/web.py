"""The ACME server's HTTP face (RFC 8555 §7): directory, nonces, and the JWS-signed resources.

Mounted at /acme/ (the default directory, /acme/directory) and at /acme/NAME/ for each
`[frontends.acme.directories.NAME]`. Every POST runs inside `signed()`: the JWS checks that
need no database, then one transaction that reads the account, verifies the signature, spends
the nonce and does the work (if the work fails, the nonce is still spent and nothing else is
written). Every response carries a fresh Replay-Nonce, `Cache-Control: no-store` and
`Link: <directory>;rel="index"`.

The request path is kept to few round trips, since most requests are polls: an account key this
process has verified before is not read again; one statement spends the nonce only if the
account is still valid with that key (acme_server.account_cache). A resource and what its JSON
needs come in one Core query, run on PostgreSQL below SQLAlchemy's execution machinery
(ca.storage.bulk.fetch_rows), as the nonce's spend is. On PostgreSQL a POST-as-GET runs without
BEGIN/COMMIT.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Blueprint, Flask, Response, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from acme_server import accounts, ari, nonces, orders, ratelimits
from acme_server import revocation as acme_revocation
from acme_server.context import ACMEContext
from acme_server.jws import (
    AccountKey,
    JWSObject,
    check_algorithm,
    load_jwk,
    load_jwk_json,
    parse_jws,
)
from acme_server.jws import verify_signature as verify_jws
from acme_server.problems import PROBLEM_CONTENT_TYPE, ACMEProblem, from_core_error
from acme_server.settings import parse_settings
from acme_server.storage import (
    ACCOUNT_BY_KID,
    ACCOUNT_FOR_UPDATE,
    AUTHORIZATION_AND_CHALLENGES_BY_PUBLIC_ID,
    CHALLENGE_AND_AUTHORIZATION_BY_PUBLIC_ID,
    ORDER_AND_AUTHORIZATION_IDS_BY_PUBLIC_ID,
    ORDER_AND_CERTIFICATE_BY_PUBLIC_ID,
    AccountRow,
    AuthorizationRow,
    ChallengeRow,
    OrderRow,
    row_object,
)
from acme_server.validation import ValidationWaker, run_validation
from ca.core import CACore
from ca.errors import CoreError
from ca.storage.bulk import fetch_rows

log = logging.getLogger("privca.acme")

JOSE_CONTENT_TYPE = "application/jose+json"
PURGE_JOB = "acme_purge"
# Where the second table's columns start in a joined row (see acme_server.storage).
CHALLENGE_COLUMNS = len(ChallengeRow.__table__.c)
AUTHORIZATION_COLUMNS = len(AuthorizationRow.__table__.c)


@dataclass
class Signed:
    """A verified request: the JWS, its key, and the account when it was signed with `kid`."""

    jws: JWSObject
    url: str
    nonce: str
    nonce_expires: datetime
    key: AccountKey
    account: AccountRow | None
    directory: str

    def payload(self) -> dict[str, Any] | None:
        """None for POST-as-GET (empty payload), else the JSON object."""
        if self.jws.payload_b64 == "":
            return None
        return self.jws.payload_json()


def init_app(app: Flask, core: CACore) -> None:
    """Validate `[frontends.acme]`, register the routes, jobs, admin API and error renderer."""
    from ca.web.app import register_error_renderer

    settings = parse_settings(core.config.frontends.get("acme"), core.profiles)
    acme = ACMEContext(core, settings, nonces.NonceService(core.database, settings.nonce_lifetime))
    core.job_handlers[orders.VALIDATE_JOB] = lambda _core, job: run_validation(acme, job)
    core.job_handlers[PURGE_JOB] = lambda _core, job: _purge(acme)
    core.recurring_jobs[PURGE_JOB] = timedelta(hours=1)
    if settings.validation.immediate:
        waker = ValidationWaker(acme, settings.validation.workers)
        acme.validation_holder = waker.holder
        acme.kick_validation = waker
    app.extensions["privca.acme"] = acme
    app.register_blueprint(_blueprint(acme))
    register_error_renderer(app, "/acme", lambda exc: _render_exception(acme, exc))
    from acme_server import admin_api

    admin_api.init_app(app, core)


def _purge(acme: ACMEContext) -> None:
    now = acme.core.now()
    with acme.core.database.write() as session:
        nonces.purge_used(session, now)
        ratelimits.purge(session, acme.settings.rate_limits, now)


# --- responses -------------------------------------------------------------------------------


def _directory_of_path(acme: ACMEContext, path: str) -> str:
    parts = path.split("/")
    if len(parts) > 2 and parts[2] in acme.settings.directories and parts[2]:
        return parts[2]
    return ""


def _finish(acme: ACMEContext, response: Response) -> Response:
    """The headers every ACME response carries (RFC 8555 §6.5, §7.1)."""
    try:
        response.headers["Replay-Nonce"] = acme.nonces.mint(acme.core.now())
    except Exception:
        log.exception("could not mint a nonce")
    response.headers["Cache-Control"] = "no-store"
    directory = _directory_of_path(acme, request.path)
    if not request.path.endswith("/directory"):
        response.headers.add("Link", f'<{acme.url(directory, "directory")}>;rel="index"')
    return response


def _problem_response(acme: ACMEContext, problem: ACMEProblem) -> Response:
    response = Response(problem.to_json(), status=problem.status, mimetype=PROBLEM_CONTENT_TYPE)
    for name, value in problem.headers.items():
        response.headers.add(name, value)
    acme.core.metrics.http_errors.labels(frontend="acme", type=problem.type).inc()
    return response


def _render_exception(acme: ACMEContext, exc: Exception) -> Response:
    """Errors raised before or outside a view: routing 404/405/413 and crashes."""
    if isinstance(exc, ACMEProblem):
        problem = exc
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        kind = "serverInternal" if status >= 500 else "malformed"
        detail = {
            404: "no such ACME resource",
            405: f"method {request.method} is not allowed on this resource",
            413: "the request body is too large",
        }.get(status, exc.description or exc.name)
        problem = ACMEProblem(kind, detail, status=status)
    elif isinstance(exc, CoreError):
        problem = from_core_error(exc)
    else:
        log.error("unexpected ACME error", exc_info=exc, extra={"request_id": g.get("request_id")})
        problem = ACMEProblem(
            "serverInternal", "internal error; the request id is in the server log"
        )
    response = _problem_response(acme, problem)
    if request.blueprint != "privca_acme":
        _finish(acme, response)  # the blueprint's after_request does not run for routing errors
    return response


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> Response:
    response = Response(
        json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json"
    )
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    return response


# --- the blueprint ---------------------------------------------------------------------------


def _blueprint(acme: ACMEContext) -> Blueprint:
    core = acme.core
    settings = acme.settings
    database = core.database
    blueprint = Blueprint("privca_acme", __name__)
    named = sorted(n for n in settings.directories if n)
    accounts_seen = acme.accounts
    chains: dict[int, bytes] = {}  # issuer id -> PEM chain for certificate downloads

    def route(rule: str, methods: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            blueprint.add_url_rule(
                "/acme" + rule, view.__name__, view, methods=methods, defaults={"directory": ""}
            )
            if named:
                blueprint.add_url_rule(
                    f"/acme/<any({','.join(named)}):directory>{rule}",
                    view.__name__ + "_named",
                    view,
                    methods=methods,
                )
            return view

        return decorator

    @blueprint.after_request
    def _headers(response: Response) -> Response:
        return _finish(acme, response)

    @blueprint.errorhandler(ACMEProblem)
    def _problem(exc: ACMEProblem) -> Response:
        return _problem_response(acme, exc)

    @blueprint.errorhandler(CoreError)
    def _core_error(exc: CoreError) -> Response:
        return _problem_response(acme, from_core_error(exc))

    @blueprint.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _render_exception(acme, exc)

    @blueprint.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        return _render_exception(acme, exc)

    # -- request authentication -------------------------------------------------------------

    def request_url() -> str:
        query = request.query_string.decode("latin-1")
        return acme.base + request.path + (f"?{query}" if query else "")

    def checked_jws(directory: str, *, jwk: bool, kid: bool) -> tuple[JWSObject, str, datetime]:
        """The RFC 8555 §6.2-6.5 checks that need no database: body, JWS shape, alg, url, nonce."""
        if request.mimetype != JOSE_CONTENT_TYPE:
            raise ACMEProblem("malformed", f"Content-Type must be {JOSE_CONTENT_TYPE}", status=415)
        if (request.content_length or 0) > settings.max_body_bytes:
            raise ACMEProblem("malformed", "the request body is too large", status=413)
        body = request.get_data(cache=True)
        if len(body) > settings.max_body_bytes:
            raise ACMEProblem("malformed", "the request body is too large", status=413)
        jws = parse_jws(body)
        protected = jws.protected
        check_algorithm(protected)
        url = request_url()
        if protected.get("url") != url:
            raise ACMEProblem("unauthorized", "the JWS url header is not this request's URL")
        if ("jwk" in protected) == ("kid" in protected):
            raise ACMEProblem("malformed", "the JWS must carry exactly one of jwk and kid")
        expires = acme.nonces.check(protected.get("nonce"), core.now())
        if "jwk" in protected and not jwk:
            raise ACMEProblem("malformed", "this request must be signed by an account (kid)")
        if "kid" in protected and not kid:
            raise ACMEProblem("malformed", "this request must carry the key as jwk")
        return jws, url, expires

    @contextmanager
    def signed(
        directory: str, *, jwk: bool = False, kid: bool = True
    ) -> Iterator[tuple[Signed, Session]]:
        """Authenticate the request, then spend its nonce and do the work in one transaction.

        Every check passes before anything is written. The account is checked in the same
        transaction as the work, so a request costs one connection checkout and one commit.
        If the work fails, only the nonce stays spent (RFC 8555 §6.5: a nonce is good for one
        request, successful or not).
        """
        jws, url, expires = checked_jws(directory, jwk=jwk, kid=kid)
        protected = jws.protected
        nonce = protected["nonce"]
        known = None
        if "kid" in protected:
            public_id = account_public_id(directory, protected["kid"])
            known = accounts_seen.get(directory, public_id)
            if known is not None and not known.key.verify(
                protected["alg"], jws.signing_input, jws.signature
            ):
                known = None  # perhaps a rolled-over key: the full path below reads the account
        # A POST-as-GET only reads once its nonce is spent: on PostgreSQL it runs without a
        # transaction (each statement commits on its own), saving the BEGIN and COMMIT round
        # trips of most requests (the polls).
        post_as_get = jws.payload_b64 == ""
        # Without a transaction the nonce's spend commits at once; in one, an error rolls it back.
        spend_commits_alone = post_as_get and not database.is_sqlite
        spent = False
        try:
            with database.autocommit() if post_as_get else database.write() as session:
                account = None
                if known is not None and acme.nonces.spend_for_account(
                    session, nonce, expires, known.account.id, known.account.key_thumbprint
                ):
                    account, key = known.account, known.key
                else:
                    if known is not None:
                        accounts_seen.forget(directory, public_id)  # no longer valid, or new key
                    if "jwk" in protected:
                        key = load_jwk(protected["jwk"])
                    else:
                        account = account_for_kid(session, directory, public_id)
                        key = load_jwk_json(account.jwk)
                    verify_jws(jws, key)
                    if account is not None:
                        if account.status != "valid":
                            accounts_seen.forget(directory, public_id)
                            raise ACMEProblem("unauthorized", f"the account is {account.status}")
                        accounts_seen.remember(account, key)
                    acme.nonces.spend(session, nonce, expires)
                spent = True
                yield Signed(jws, url, nonce, expires, key, account, directory), session
        except Exception:
            if spent and not spend_commits_alone:
                try:
                    with database.write() as session:
                        acme.nonces.spend(session, nonce, expires)
                except ACMEProblem:
                    pass  # a concurrent replay spent it: either way it is gone
            raise

    def account_public_id(directory: str, kid: Any) -> str:
        prefix = acme.url(directory, "acct") + "/"
        if not isinstance(kid, str) or not kid.startswith(prefix):
            raise ACMEProblem("accountDoesNotExist", "kid is not an account URL of this directory")
        return kid[len(prefix) :]

    def account_for_kid(session: Session, directory: str, public_id: str) -> AccountRow:
        account = session.scalars(
            ACCOUNT_BY_KID, {"public_id": public_id, "directory": directory}
        ).first()
        if account is None:
            raise ACMEProblem("accountDoesNotExist", "no account with this kid")
        return account

    def locked_account(session: Session, account: AccountRow) -> AccountRow:
        # populate_existing: the row may have been read earlier in this transaction, before the
        # lock. The account changes here (contact, status, key): drop what this process knows.
        accounts_seen.forget(account.directory, account.public_id)
        row = session.scalars(
            ACCOUNT_FOR_UPDATE,
            {"id": account.id},
            execution_options={"populate_existing": True},
        ).first()
        if row is None or row.status != "valid":
            raise ACMEProblem("unauthorized", "the account is not valid")
        return row

    def owned(owner_id: int | None, account: AccountRow | None) -> None:
        """404 for a missing resource (`owner_id` None), 403 for another account's."""
        if owner_id is None:
            raise ACMEProblem("malformed", "no such resource", status=404)
        if account is None or owner_id != account.id:
            raise ACMEProblem("unauthorized", "this resource belongs to another account")

    def owned_order(
        session: Session, directory: str, public_id: str, account: AccountRow | None
    ) -> tuple[OrderRow, list[str]]:
        """An order and its authorization URLs (in authorization id order), in one query."""
        rows = fetch_rows(
            session.connection(), ORDER_AND_AUTHORIZATION_IDS_BY_PUBLIC_ID, {"public_id": public_id}
        )
        order = row_object(OrderRow, rows[0]) if rows else None
        owned(order.account_id if order is not None else None, account)
        assert order is not None
        urls = [acme.url(directory, "authz", r[-1]) for r in rows if r[-1] is not None]
        return order, urls

    def owned_challenge(
        session: Session, public_id: str, account: AccountRow | None
    ) -> tuple[ChallengeRow, AuthorizationRow]:
        """A challenge and its authorization (which says whose it is), in one query."""
        rows = fetch_rows(
            session.connection(), CHALLENGE_AND_AUTHORIZATION_BY_PUBLIC_ID, {"public_id": public_id}
        )
        row = rows[0] if rows else None
        authz = row_object(AuthorizationRow, row, CHALLENGE_COLUMNS) if row is not None else None
        owned(authz.account_id if authz is not None else None, account)
        assert row is not None and authz is not None
        return row_object(ChallengeRow, row), authz

    def owned_authorization(
        session: Session, public_id: str, account: AccountRow | None
    ) -> tuple[AuthorizationRow, list[ChallengeRow]]:
        """An authorization and its challenges in id order, in one query."""
        query = AUTHORIZATION_AND_CHALLENGES_BY_PUBLIC_ID
        rows = fetch_rows(session.connection(), query, {"public_id": public_id})
        authz = row_object(AuthorizationRow, rows[0]) if rows else None
        owned(authz.account_id if authz is not None else None, account)
        assert authz is not None
        return authz, [row_object(ChallengeRow, r, AUTHORIZATION_COLUMNS) for r in rows]

    # -- directory and nonces ---------------------------------------------------------------

    @route("/directory", ["GET"])
    def directory(directory: str) -> Response:
        meta: dict[str, Any] = {
            "externalAccountRequired": settings.directories[directory].eab_required,
            "profiles": {
                name: core.profiles[name].description or name
                for name in settings.directories[directory].profiles
            },
        }
        if settings.terms_of_service:
            meta["termsOfService"] = settings.terms_of_service
        if settings.website:
            meta["website"] = settings.website
        if settings.caa_identities:
            meta["caaIdentities"] = list(settings.caa_identities)
        return _json(
            {
                "newNonce": acme.url(directory, "new-nonce"),
                "newAccount": acme.url(directory, "new-account"),
                "newOrder": acme.url(directory, "new-order"),
                "revokeCert": acme.url(directory, "revoke-cert"),
                "keyChange": acme.url(directory, "key-change"),
                "renewalInfo": acme.url(directory, "renewal-info"),
                "meta": meta,
            }
        )

    @route("/new-nonce", ["GET", "HEAD"])
    def new_nonce(directory: str) -> Response:
        # RFC 8555 §7.2: 200 for HEAD, 204 for GET.
        return Response(status=200 if request.method == "HEAD" else 204)

    # -- accounts -----------------------------------------------------------------------------

    @route("/new-account", ["POST"])
    def new_account(directory: str) -> Response:
        with signed(directory, jwk=True, kid=False) as (req, session):
            payload = req.payload()
            if payload is None:
                raise ACMEProblem("malformed", "newAccount needs a JSON payload")
            account, created = accounts.new_account(
                acme,
                session,
                directory,
                req.key,
                payload,
                req.url,
                request.remote_addr,
                core.now(),
            )
            body = acme.account_json(account)
            location = acme.account_url(account)
        return _json(body, 201 if created else 200, Location=location)

    @route("/acct/<account_id>", ["POST"])
    def account(directory: str, account_id: str) -> Response:
        with signed(directory) as (req, session):
            assert req.account is not None
            if req.account.public_id != account_id:
                raise ACMEProblem("unauthorized", "you may only access your own account")
            payload = req.payload()
            row = locked_account(session, req.account)
            if payload:
                accounts.update_account(acme, session, row, payload, core.now())
            body = acme.account_json(row)
        return _json(body)

    @route("/acct/<account_id>/orders", ["POST"])
    def account_orders(directory: str, account_id: str) -> Response:
        with signed(directory) as (req, session):
            assert req.account is not None
            if req.account.public_id != account_id:
                raise ACMEProblem("unauthorized", "you may only list your own orders")
            if req.payload() is not None:
                raise ACMEProblem("malformed", "the orders list is fetched with POST-as-GET")
            cursor = request.args.get("cursor", "0")
            if not cursor.isdigit():
                raise ACMEProblem("malformed", "cursor must be a number")
            size = settings.orders_page_size
            now = core.now()
            rows = session.scalars(
                select(OrderRow)
                .where(
                    OrderRow.account_id == req.account.id,
                    OrderRow.id > int(cursor),
                    OrderRow.status != "invalid",
                )
                .order_by(OrderRow.id)
                .limit(size + 1)
            ).all()
        shown = [r for r in rows[:size]]
        body = {
            "orders": [
                acme.order_url(directory, r)
                for r in shown
                if orders.order_status(r, now) != "invalid"
            ]
        }
        headers = {}
        if len(rows) > size:
            next_url = acme.account_url(req.account) + f"/orders?cursor={shown[-1].id}"
            headers["Link"] = f'<{next_url}>;rel="next"'
        return _json(body, **headers)

    @route("/key-change", ["POST"])
    def key_change(directory: str) -> Response:
        with signed(directory) as (req, session):
            assert req.account is not None
            payload = req.payload()
            if payload is None:
                raise ACMEProblem("malformed", "keyChange needs the inner JWS as payload")
            row = locked_account(session, req.account)
            accounts.key_change(acme, session, row, payload, req.url, core.now())
            body = acme.account_json(row)
        return _json(body)

    # -- orders -------------------------------------------------------------------------------

    @route("/new-order", ["POST"])
    def new_order(directory: str) -> Response:
        with signed(directory) as (req, session):
            assert req.account is not None
            payload = req.payload()
            if payload is None:
                raise ACMEProblem("malformed", "newOrder needs a JSON payload")
            now = core.now()
            order, authorizations = orders.new_order(acme, session, req.account, payload, now)
            body = orders.order_json(
                acme,
                session,
                req.account,
                order,
                now,
                authorization_urls=[acme.authz_url(directory, a) for a in authorizations],
            )
            location = acme.order_url(directory, order)
        return _json(body, 201, Location=location)

    @route("/order/<order_id>", ["POST"])
    def order(directory: str, order_id: str) -> Response:
        with signed(directory) as (req, session):
            if req.payload() is not None:
                raise ACMEProblem("malformed", "orders are fetched with POST-as-GET")
            now = core.now()
            row, authorization_urls = owned_order(session, directory, order_id, req.account)
            assert req.account is not None
            body = orders.order_json(
                acme, None, req.account, row, now, authorization_urls=authorization_urls
            )
        headers = {"Retry_After": "1"} if body["status"] in ("pending", "processing") else {}
        return _json(body, **headers)

    @route("/order/<order_id>/finalize", ["POST"])
    def finalize(directory: str, order_id: str) -> Response:
        with signed(directory) as (req, session):
            assert req.account is not None
            payload = req.payload()
            if payload is None:
                raise ACMEProblem("malformed", "finalize needs a JSON payload with csr")
            now = core.now()
            row, authorization_urls = owned_order(session, directory, order_id, req.account)
            status = orders.order_status(row, now)
            if status != "ready":
                raise ACMEProblem(
                    "orderNotReady",
                    f'the order is "{status}"; it can be finalized only when "ready"',
                )
            parsed, identifiers = orders.check_csr(row, payload.get("csr"), req.key)
            orders.begin_finalize(session, row, now)
        orders.issue_for_order(acme, req.account, row, parsed, identifiers)
        # issue_for_order moved `row` to its final state; the authorizations did not change.
        body = orders.order_json(
            acme, None, req.account, row, core.now(), authorization_urls=authorization_urls
        )
        return _json(body, Location=acme.order_url(directory, row))

    # -- authorizations and challenges --------------------------------------------------------

    @route("/authz/<authz_id>", ["POST"])
    def authorization(directory: str, authz_id: str) -> Response:
        with signed(directory) as (req, session):
            payload = req.payload()
            now = core.now()
            row, challenges = owned_authorization(session, authz_id, req.account)
            if payload is not None:
                if payload.get("status") != "deactivated" or len(payload) != 1:
                    raise ACMEProblem(
                        "malformed", 'an authorization update must be {"status": "deactivated"}'
                    )
                orders.deactivate_authorization(session, row, now)
            body = orders.authorization_json(acme, req.account, row, challenges, now)
        headers = {"Retry_After": "1"} if body["status"] == "pending" else {}
        return _json(body, **headers)

    @route("/chall/<challenge_id>", ["POST"])
    def challenge(directory: str, challenge_id: str) -> Response:
        job = None
        with signed(directory) as (req, session):
            assert req.account is not None
            payload = req.payload()
            if payload is not None and payload != {}:
                raise ACMEProblem("malformed", "a challenge response is an empty JSON object")
            now = core.now()
            row, authz = owned_challenge(session, challenge_id, req.account)
            if payload is not None:
                job = orders.respond_to_challenge(acme, session, req.account, row, authz, now)
            body = acme.challenge_json(directory, row)
            up = acme.authz_url(directory, authz)
        if job is not None:
            acme.kick_validation(job)
        headers = {"Link": f'<{up}>;rel="up"'}
        if body["status"] == "processing":
            headers["Retry_After"] = "1"
        return _json(body, **headers)

    # -- certificates -------------------------------------------------------------------------

    @route("/cert/<order_id>", ["POST"])
    def certificate(directory: str, order_id: str) -> Response:
        with signed(directory) as (req, session):
            if req.payload() is not None:
                raise ACMEProblem("malformed", "certificates are fetched with POST-as-GET")
            rows = fetch_rows(
                session.connection(), ORDER_AND_CERTIFICATE_BY_PUBLIC_ID, {"public_id": order_id}
            )
            order = row_object(OrderRow, rows[0]) if rows else None
            owned(order.account_id if order is not None else None, req.account)
            assert order is not None
            der, issuer_id = rows[0][-2], rows[0][-1]
            if order.certificate_id is None or der is None:
                raise ACMEProblem("malformed", "this order has no certificate", status=404)
        issuer = core.issuer_by_id(issuer_id)
        if issuer is None:
            raise ACMEProblem("serverInternal", "the issuer of this certificate is not loaded")
        if issuer.id not in chains:
            # Each CA up to (not including) the root (RFC 8555 §7.4.2); fixed per process.
            chains[issuer.id] = b"".join(c.public_bytes(Encoding.PEM) for c in issuer.chain[:-1])
        pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
        # End entity first, then its chain.
        response = Response(pem + chains[issuer.id], mimetype="application/pem-certificate-chain")
        response.headers.add("Link", f'<{core.urls.ca_certificate(issuer.name)}>;rel="up"')
        return response

    @route("/revoke-cert", ["POST"])
    def revoke_cert(directory: str) -> Response:
        with signed(directory, jwk=True) as (req, session):
            payload = req.payload()
            if payload is None:
                raise ACMEProblem("malformed", "revokeCert needs a JSON payload")
            target = acme_revocation.authorize_revocation(
                acme, session, payload, req.account, req.key, core.now()
            )
        acme_revocation.revoke(target, acme)
        return Response(status=200)

    # -- ARI --------------------------------------------------------------------------------

    @route("/renewal-info/<path:cert_id>", ["GET"])
    def renewal_info(directory: str, cert_id: str) -> Response:
        body = ari.renewal_info(acme, cert_id, core.now())
        return _json(body, Retry_After=str(settings.ari.retry_after))

    return blueprint


__all__ = ["Signed", "init_app", "parse_jws"]
