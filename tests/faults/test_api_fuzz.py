"""Fuzzing the HTTP API from its own OpenAPI document, with Schemathesis.

Schemathesis reads the node's served ``/v1/openapi.json`` and generates requests for every
operation: ones the document allows (positive) and ones it forbids (negative). Half are sent
unsigned, half signed by a member's key (an HTTP message signature over the exact bytes
sent), so that fuzzed paths, queries and bodies get past authentication and into the
handlers. Every answer must be documented (status code, content type, body schema), no
answer may be a 5xx, and a request the document forbids must be refused. Afterwards the
ledger's invariants hold and an independent replay of the served log agrees with it.

The node runs in-process on aiohttp's test server, in the test's event loop; Schemathesis
(synchronous, over ``requests``) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation

from crypto.httpsig import sign_request
from crypto.keys import SecretKey, b64url
from crypto.note import format_verifier_key
from node.audit import audit_log, http_source
from node.checkpoints import log_origin
from node.client import TallyClient
from node.config import ApiSettings, Config, LogSettings
from protocol.ledger import invariant_violations
from tests.node.conftest import start_collective

# Fuzzing sends far faster than a member would; checkpoints come quickly so the audit sees all.
CONFIG = Config(
    api=ApiSettings(rate_per_key_per_second=1e6, rate_burst=1_000_000),
    log=LogSettings(checkpoint_delay_ms=50, public_entries=True),
)
EXAMPLES_PER_OPERATION = 12  # per generation mode; about 30 operations: well under a minute
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class SignedBy(requests.auth.AuthBase):
    """Sign the prepared request (method, path and query, the body as sent) for the node."""

    def __init__(self, key: SecretKey, recipient_key_id: str) -> None:
        self.key = key
        self.recipient_key_id = recipient_key_id

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        path, _, query = (r.path_url or "/").partition("?")
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
        r.headers.update(sign_request(
            self.key, method=r.method or "GET", path=path, query=query, body=body,
            recipient_key_id=self.recipient_key_id, created=int(time.time()),
            nonce=b64url(os.urandom(16)),
        ))
        return r


def fuzz(url: str, signer: SignedBy, seen: set[tuple[str, int]]) -> list[str]:
    """Run Schemathesis over every operation; return the failures it found, if any, and
    add each (operation, status) answered to ``seen``."""
    schema = schemathesis.openapi.from_url(url + "/v1/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, "the document should describe the whole API"
    session = requests.Session()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), signed=st.booleans())
            def run(case: Any, signed: bool) -> None:
                # A case whose fault is a missing or bad signature header goes as generated.
                if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
                    signed = False
                response = case.call_and_validate(base_url=url, session=session, checks=CHECKS,
                                                  auth=signer if signed else None)
                seen.add((case.operation.label, response.status_code))

            try:
                run()
            except Unsatisfiable:
                # No request the document forbids exists for an operation whose only inputs
                # are free strings, or that has none (GET /v1/health).
                assert mode == GenerationMode.NEGATIVE, operation.label
            # Schemathesis reports check failures as a BaseExceptionGroup.
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:3000]}")
    session.close()
    return failures


async def test_fuzzing_the_api_from_its_document_finds_no_fault(tmp_path: Path) -> None:
    server, coop = await start_collective(tmp_path, CONFIG)
    try:
        signer = SignedBy(coop.alice, coop.node.node_key.public.key_id)
        seen: set[tuple[str, int]] = set()
        failures = await asyncio.to_thread(fuzz, coop.url, signer, seen)
        assert not failures, "\n\n".join(failures)
        # The signing reached the handlers: signed reads were answered, not only refused.
        assert ("GET /v1/whoami", 200) in seen and ("GET /v1/accounts", 200) in seen, seen

        state = coop.node.ledger
        assert invariant_violations(state) == []
        # Replay the served log from empty, as `tally audit` does, trusting nothing served.
        await asyncio.sleep(0.2)  # let the last checkpoint cover every entry
        vkey = format_verifier_key(log_origin(state.ledger_id), 0x01,
                                   coop.node.node_key.public.raw)
        async with TallyClient(coop.url, coop.alice, retries=0) as client:
            report = await audit_log(http_source(client), vkey=vkey,
                                     served_accounts=client.accounts)
        assert report.passed, report.checks
        assert report.size == state.size
        assert report.balances == {
            h: a.balance for h, a in state.accounts.items() if a.kind == "member"
        }
    finally:
        await coop.client.close()
        await server.close()
