"""The served OpenAPI document matches the routes the app registers and the bodies it sends.

A client generated from ``/v1/openapi.json`` must find every route, and nothing else, and
must be able to parse every real answer with the schema the document gives for it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from crypto.keys import SecretKey
from node.api import make_app
from node.client import transfer_body
from protocol.codes import ResultCode
from protocol.messages import sign_message
from tests.node.conftest import Collective

DOC_URI = "urn:tally:openapi"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


async def served_document(coop: Collective) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(coop.url + "/v1/openapi.json") as resp:
            assert resp.status == 200
            return await resp.json()  # type: ignore[no-any-return]


def registered_routes(coop: Collective) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for route in make_app(coop.node).router.routes():
        assert route.resource is not None
        routes.setdefault(route.resource.canonical, set()).add(route.method.lower())
    for methods in routes.values():
        # aiohttp answers HEAD wherever it answers GET; OpenAPI leaves HEAD implied.
        if "get" in methods:
            methods.discard("head")
    return routes


async def test_document_is_openapi_3_1_and_lists_exactly_the_routes(coop: Collective) -> None:
    doc = await served_document(coop)
    assert doc["openapi"].startswith("3.1.")
    documented = {path: {m for m in item if m in METHODS} for path, item in doc["paths"].items()}
    assert documented == registered_routes(coop)
    operation_ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for m, op in item.items()
        if m in METHODS
    ]
    assert len(operation_ids) == len(set(operation_ids))


async def test_every_result_code_is_documented(coop: Collective) -> None:
    schemas = (await served_document(coop))["components"]["schemas"]
    codes = {c.value for c in ResultCode}
    assert set(schemas["Problem"]["properties"]["code"]["enum"]) == codes
    assert set(schemas["BatchItemRefused"]["properties"]["result"]["enum"]) == codes


async def test_every_schema_reference_resolves(coop: Collective) -> None:
    doc = await served_document(coop)
    refs = [m for m in _walk(doc) if isinstance(m, dict) and "$ref" in m]
    assert refs
    for ref in refs:
        name = ref["$ref"].removeprefix("#/components/schemas/")
        assert name in doc["components"]["schemas"], ref
    Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


class Contract:
    """Validates real responses against the schema the document gives for them."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(DOC_URI, resource)
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, method: str, template: str, status: int, content_type: str, body: Any) -> None:
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answers {status}, undocumented"
        content = responses[str(status)].get("content", {})
        assert content_type in content, f"{method} {template} {status} is not {content_type}"
        pointer = "/".join(
            p.replace("~", "~0").replace("/", "~1")
            for p in (
                "paths",
                template,
                method.lower(),
                "responses",
                str(status),
                "content",
                content_type,
                "schema",
            )
        )
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#/{pointer}"}, registry=self.registry)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        assert not errors, f"{method} {template} {status}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors
        )
        self.checked.add((method.upper(), template, status))


async def test_real_responses_match_the_documented_schemas(coop: Collective) -> None:
    contract = Contract(await served_document(coop))
    ledger = coop.node.ledger.ledger_id
    carol = SecretKey(os.urandom(32))

    async with aiohttp.ClientSession() as session:

        async def call(
            method: str,
            template: str,
            target: str | None = None,
            *,
            body: Any = None,
            raw: bytes | None = None,
            key: SecretKey | None = None,
            content_type: str = "application/json",
        ) -> tuple[int, Any]:
            target = target or template
            data = (
                raw
                if raw is not None
                else (json.dumps(body).encode() if body is not None else None)
            )
            headers = {"Content-Type": content_type} if data is not None else {}
            if key is not None:
                headers.update(coop.read_headers(key, target, method=method))
            async with session.request(method, coop.url + target, data=data, headers=headers) as r:
                doc = await r.json(content_type=None)
                contract.check(method, template, r.status, r.content_type, doc)
                return r.status, doc

        assert (await call("GET", "/v1/health"))[0] == 200
        assert (await call("GET", "/v1/info"))[1]["ledger_id"] == ledger

        # writes: a receipt, its retry, an admission, a batch with every kind of item
        paid = transfer_body(coop.alice, ledger, "alice", "bob", 25, memo="soup")
        assert (await call("POST", "/v1/transfers", body=paid))[0] == 201
        assert (await call("POST", "/v1/transfers", body=paid))[1]["result"] == "exists"
        admit = await coop.client.build_act(
            "admit", handle="carol", key=carol.public, debit_limit=50, credit_limit=50
        )
        status, admitted = await call(
            "POST", "/v1/acts", body=sign_message(admit, coop.steward).to_json()
        )
        assert (status, admitted["handle"]) == (201, "carol")
        _, batch = await call(
            "POST",
            "/v1/transfers/batch",
            body={
                "transfers": [
                    transfer_body(coop.bob, ledger, "bob", "carol", 5),
                    paid,
                    transfer_body(coop.bob, ledger, "bob", "carol", 10**6),
                    {"transfer": {"msg": {}, "sigs": []}},
                ]
            },
        )
        assert [r["result"] for r in batch["results"]] == [
            "ok",
            "exists",
            "exceeds_debit_limit",
            "invalid_field",
        ]

        # signed reads, by a member and by the steward
        for key in (coop.alice, coop.steward):
            await call("GET", "/v1/whoami", key=key)
            await call("GET", "/v1/accounts", key=key)
        assert (await call("GET", "/v1/accounts/{handle}", "/v1/accounts/bob", key=coop.alice))[1][
            "balance"
        ] == 20
        _, history = await call(
            "GET",
            "/v1/accounts/{handle}/history",
            "/v1/accounts/bob/history?limit=1",
            key=coop.alice,
        )
        assert history["next"] is not None and history["postings"][0]["memo"] is None
        _, history = await call(
            "GET", "/v1/accounts/{handle}/history", "/v1/accounts/alice/history", key=coop.alice
        )
        assert history["next"] is None and history["postings"][0]["memo"] == "soup"
        for event_id in (paid["transfer"]["msg"]["id"], admitted["id"]):
            await call("GET", "/v1/events/{id}", f"/v1/events/{event_id}", key=coop.alice)

        # problems, each documented for the path and status it comes from
        for code in ("ok", "exceeds_debit_limit"):
            await call("GET", "/problems/{code}", f"/problems/{code}")
        await call("GET", "/problems/{code}", "/problems/no_such_code")
        await call("POST", "/v1/transfers", raw=b"{")
        await call("POST", "/v1/transfers", raw=b"{}", content_type="text/plain")
        await call("POST", "/v1/transfers", raw=b" " * (coop.node.config.api.max_body_bytes + 1))
        await call(
            "POST", "/v1/transfers", body=transfer_body(coop.alice, ledger, "alice", "bob", 0)
        )
        reused = transfer_body(
            coop.alice, ledger, "alice", "bob", 26, transfer_id=paid["transfer"]["msg"]["id"]
        )
        await call("POST", "/v1/transfers", body=reused)
        await call("POST", "/v1/transfers/batch", body={"transfers": []})
        await call("POST", "/v1/acts", body=sign_message(admit, coop.alice).to_json())
        await call("GET", "/v1/whoami")
        await call("GET", "/v1/whoami", key=SecretKey(os.urandom(32)))
        await call("GET", "/v1/accounts/{handle}", "/v1/accounts/zed", key=coop.alice)
        await call("GET", "/v1/events/{id}", "/v1/events/" + "0" * 32, key=coop.alice)
        await call(
            "GET",
            "/v1/accounts/{handle}/history",
            "/v1/accounts/bob/history?limit=0",
            key=coop.alice,
        )

    statuses = {(m, t): set() for m, t, _ in contract.checked}
    for m, t, s in contract.checked:
        statuses[(m, t)].add(s)
    assert statuses[("POST", "/v1/transfers")] == {200, 201, 400, 409, 413, 415, 422}
    assert statuses[("GET", "/v1/whoami")] == {200, 401, 403}
    # every operation of the member API was exercised (the log's routes have their own tests)
    assert set(statuses) == {
        ("GET", "/v1/health"),
        ("GET", "/v1/info"),
        ("GET", "/problems/{code}"),
        ("POST", "/v1/transfers"),
        ("POST", "/v1/transfers/batch"),
        ("POST", "/v1/acts"),
        ("GET", "/v1/whoami"),
        ("GET", "/v1/accounts"),
        ("GET", "/v1/accounts/{handle}"),
        ("GET", "/v1/accounts/{handle}/history"),
        ("GET", "/v1/events/{id}"),
    }


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [("/v1/nothing", 404, "not_found"), ("/v1/transfers", 405, "method_not_allowed")],
)
async def test_unknown_route_and_wrong_method_are_problems(
    coop: Collective, target: str, status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.delete(coop.url + target) as resp:
            problem = await resp.json(content_type=None)
            assert (resp.status, resp.content_type) == (status, "application/problem+json")
            assert (problem["status"], problem["code"]) == (status, code)
