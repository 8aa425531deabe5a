"""One token used from many threads at once, and from processes forked after it was used."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hsm import HSMSigner
from tests.integration.hsm_fixtures import SoftHSMToken, softhsm_token  # noqa: F401
from tests.integration.test_hsm_token import verify

pytestmark = pytest.mark.integration

THREADS = 8
PROCESSES = 2
SIGNATURES_EACH = 200
WAIT_SECONDS = 120


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_eight_threads_sign_at_once_on_one_token(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
) -> None:
    # Without the module lock SoftHSM (initialised without locking) crashes or answers
    # CKR_GENERAL_ERROR here.
    token = softhsm_token.token()
    signer = token.generate_key(key_type, "issuing")
    start = threading.Barrier(THREADS, timeout=WAIT_SECONDS)

    def sign_many(thread: int) -> list[tuple[bytes, bytes]]:
        start.wait()
        results = []
        for n in range(SIGNATURES_EACH):
            message = f"thread {thread} message {n}".encode()
            results.append((message, signer.sign(message)))
        return results

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(sign_many, thread) for thread in range(THREADS)]
        results = [pair for future in futures for pair in future.result(timeout=WAIT_SECONDS)]

    assert len(results) == THREADS * SIGNATURES_EACH
    for message, signature in results:
        verify(signer, signature, message)


def _sign_in_child(signer: HSMSigner, child: int, queue: multiprocessing.Queue) -> None:
    try:
        signatures = []
        for n in range(SIGNATURES_EACH):
            message = f"child {child} message {n}".encode()
            signatures.append((message, signer.sign(message)))
        queue.put((child, signatures, None))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put((child, [], f"{type(exc).__name__}: {exc}"))


def test_forked_processes_sign_with_a_token_the_parent_already_used(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    token = softhsm_token.token()
    signer = token.generate_key("ec-p256", "issuing")
    verify(signer, signer.sign(b"parent before fork"), b"parent before fork")

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [
        context.Process(target=_sign_in_child, args=(signer, child, queue))
        for child in range(PROCESSES)
    ]
    for process in children:
        process.start()
    reports = [queue.get(timeout=WAIT_SECONDS) for _ in children]
    for process in children:
        process.join(timeout=WAIT_SECONDS)
        assert process.exitcode == 0

    assert sorted(child for child, _, _ in reports) == list(range(PROCESSES))
    for child, signatures, error in reports:
        assert error is None, f"child {child}: {error}"
        assert len(signatures) == SIGNATURES_EACH
        for message, signature in signatures:
            verify(signer, signature, message)
    # The children's C_Finalize/C_Initialize must not have disturbed the parent's session.
    verify(signer, signer.sign(b"parent after fork"), b"parent after fork")


def test_forked_process_can_use_a_token_the_parent_never_opened(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    signer = softhsm_token.token().generate_key("rsa-2048", "issuing")
    fresh = softhsm_token.token().find_signer("issuing")

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_sign_in_child, args=(fresh, 0, queue))
    process.start()
    _, signatures, error = queue.get(timeout=WAIT_SECONDS)
    process.join(timeout=WAIT_SECONDS)

    assert error is None, error
    assert len(signatures) == SIGNATURES_EACH
    for message, signature in signatures[:10]:
        verify(signer, signature, message)
