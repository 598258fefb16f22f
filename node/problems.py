"""RFC 9457 problem details: the one boundary where refusals become HTTP responses.

Layer: node. Handlers raise ``Problem`` (or let a typed error from ``crypto``/``protocol``
propagate); the ``problem_middleware`` turns each into ``application/problem+json`` with the
stable ``code``. No handler builds an error response by hand.

Exception tree::

    Problem                      a refusal with a ResultCode (4xx), raised by handlers
    node.writer.Overloaded       the writer's queue is full -> 503 overloaded, Retry-After
    crypto.canonical.CanonicalError   bad JSON          -> 400 via its .code
    protocol.messages.MessageError    bad message shape -> 400 via its .code
    crypto.httpsig.SignedRequestError bad signed read   -> 401 via its .code
    Problem(close=True)          answered, then the connection is closed unread (408)
    aiohttp HTTPException             routing / size    -> its own status, as a problem
    anything else                     a fault in the node -> 500 internal_error, logged
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from crypto.canonical import CanonicalError
from crypto.httpsig import SignedRequestError
from node.writer import Overloaded
from protocol.codes import ResultCode
from protocol.gossip import GossipError
from protocol.messages import MessageError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"

STATUS: dict[ResultCode, int] = {
    ResultCode.invalid_json: 400,
    ResultCode.float_not_allowed: 400,
    ResultCode.duplicate_key: 400,
    ResultCode.integer_out_of_range: 400,
    ResultCode.missing_field: 400,
    ResultCode.unknown_field: 400,
    ResultCode.invalid_field: 400,
    ResultCode.body_too_large: 413,
    ResultCode.batch_too_large: 413,
    ResultCode.unsupported_media_type: 415,
    ResultCode.unsupported_protocol: 400,
    ResultCode.exists_with_different_fields: 409,
    ResultCode.account_exists: 409,
    ResultCode.key_in_use: 409,
    ResultCode.signature_required: 401,
    ResultCode.malformed_signature: 401,
    ResultCode.bad_digest: 401,
    ResultCode.wrong_recipient: 401,
    ResultCode.stale_request: 401,
    ResultCode.replayed_request: 401,
    ResultCode.unknown_signer: 403,
    ResultCode.forbidden: 403,
    ResultCode.not_found: 404,
    ResultCode.unknown_log: 404,
    ResultCode.old_size_mismatch: 409,
    ResultCode.method_not_allowed: 405,
    ResultCode.rate_limited: 429,
    ResultCode.request_timeout: 408,
    ResultCode.overloaded: 503,
    ResultCode.internal_error: 500,
}

TITLES: dict[ResultCode, str] = {
    ResultCode.bad_signature: "A signature does not verify",
    ResultCode.exceeds_debit_limit: "The payer's debit limit would be exceeded",
    ResultCode.exceeds_credit_limit: "The payee's credit limit would be exceeded",
}


def status_for(code: ResultCode) -> int:
    """Ledger-rule refusals are 422: the request was understood and the rules said no."""
    return STATUS.get(code, 422)


def title_for(code: ResultCode) -> str:
    return TITLES.get(code, code.value.replace("_", " ").capitalize())


class Problem(Exception):
    def __init__(
        self,
        code: ResultCode,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        status: int | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status = status if status is not None else status_for(code)
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}
        # Close the connection once answered: the rest of the request is still on its way
        # and will not be read (a body that took too long).
        self.close = close

    def body(self, instance: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": f"/problems/{self.code.value}",
            "title": title_for(self.code),
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            "code": self.code.value,
        }
        if self.field:
            doc["field"] = self.field
        doc.update(self.extra)
        return doc


def problem_response(problem: Problem, instance: str) -> web.Response:
    return web.json_response(
        problem.body(instance),
        status=problem.status,
        content_type=PROBLEM_TYPE,
        headers=problem.headers,
    )


class FederationError(Exception):
    """A payment or line request refused; ``code`` is a ResultCode."""

    def __init__(self, code: ResultCode, detail: str,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra or {}  # more members of the problem document


def _code(value: str, fallback: ResultCode) -> ResultCode:
    try:
        return ResultCode(value)
    except ValueError:
        return fallback


def translate(exc: BaseException) -> Problem | None:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, CanonicalError):
        # The parser also refuses non-ASCII keys and lone surrogates (invalid_key,
        # invalid_string): not JSON in Tally's subset, so invalid_json, never a 500.
        return Problem(_code(exc.code, ResultCode.invalid_json), exc.message)
    if isinstance(exc, MessageError):
        return Problem(exc.code, exc.message, field=exc.field)
    if isinstance(exc, FederationError):  # a payment, line or peer request refused
        return Problem(exc.code, exc.detail, extra=exc.extra)
    if isinstance(exc, GossipError):  # a gossiped item refused by the merge
        return Problem(exc.code, exc.message)
    if isinstance(exc, SignedRequestError):
        # Every fault of a signed read is a failed authentication, bad_signature included
        # (which is 422 when a transfer's own signature fails a ledger rule).
        return Problem(_code(exc.code, ResultCode.malformed_signature), exc.message, status=401)
    if isinstance(exc, Overloaded):
        return Problem(
            ResultCode.overloaded,
            "the node is busy; nothing was applied: retry in a second",
            headers={"Retry-After": "1"},
        )
    return None


_HTTP_CODES = {
    404: (ResultCode.not_found, "no such resource: see /v1/openapi.json for the API"),
    405: (ResultCode.method_not_allowed, "this resource does not accept that method"),
    413: (ResultCode.body_too_large, "the request body is over this endpoint's size cap"),
}


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response``, then close the connection without reading what the client is still
    sending (aiohttp would otherwise drain an unread body for up to 10 s)."""
    response.force_close()  # Connection: close
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the answer is flushed before the socket is closed
    return response


def _drop_tracebacks(exc: BaseException) -> None:
    """Drop the traceback of ``exc`` and of every exception it was raised from or during.

    A traceback holds the frames it passed through, and they hold the request and its body;
    the exception is held in turn by one of them (a local, a future, aiohttp's stream),
    which makes a cycle that only the garbage collector frees, and a served node runs it
    rarely (``node.server.settle_collector``). Called once the answer no longer needs them
    (an internal error is logged, with its traceback, before)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        stack += (e.__cause__, e.__context__)


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        _drop_tracebacks(exc)  # aiohttp keeps its 404 and 405 in the request's match info
        code, detail = _HTTP_CODES.get(exc.status, (ResultCode.invalid_field, exc.reason))
        return problem_response(Problem(code, detail, status=exc.status), request.path)
    except Exception as exc:
        problem = translate(exc)
        if problem is None:
            log.exception("internal error on %s %s", request.method, request.path)
            problem = Problem(
                ResultCode.internal_error,
                "the node failed to handle this request; nothing was applied. "
                "Retry, and tell the operator if it persists.",
            )
        _drop_tracebacks(exc)  # and ``problem``, which may be ``exc``, is a local of this frame
        response = problem_response(problem, request.path)
        if problem.close:
            return await _answer_and_close(request, response)
        return response
