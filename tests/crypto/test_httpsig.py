"""Signed HTTP requests (RFC 9421 profile with RFC 9530 Content-Digest): round trip and every refusal."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.httpsig import (
    SignedRequestError,
    VerifiedRequest,
    content_digest,
    sign_request,
    signature_base,
    verify_request,
)
from crypto.keys import SecretKey
from tests.strategies import key_for, secret_keys

NODE = key_for("node")  # the recipient
ALICE = key_for("alice")
NOW = 1_700_000_000
SKEW = 300
NONCE = "bm9uY2Utbm9uY2Utbm9uY2U"
BODY = b'{"hello": "world"}'


def signed(key: SecretKey = ALICE, *, created: int = NOW, body: bytes = BODY,
           method: str = "POST", path: str = "/transfers", query: str = "a=1&b=2",
           recipient: str = NODE.public.key_id) -> dict[str, str]:
    headers = sign_request(key, method=method, path=path, query=query, body=body,
                           recipient_key_id=recipient, created=created, nonce=NONCE)
    return {name.lower(): value for name, value in headers.items()}


def verify(headers: dict[str, str], *, method: str = "POST", path: str = "/transfers",
           query: str = "a=1&b=2", body: bytes = BODY, now: int = NOW) -> VerifiedRequest:
    return verify_request(method=method, path=path, query=query, headers=headers, body=body,
                          recipient_key_id=NODE.public.key_id, now=now, max_skew=SKEW)


def refusal(headers: dict[str, str], **request: object) -> str:
    with pytest.raises(SignedRequestError) as err:
        verify(headers, **request)  # type: ignore[arg-type]
    return err.value.code


# --- round trip -------------------------------------------------------------------------------


def test_a_signed_request_verifies_and_names_its_signer() -> None:
    verified = verify(signed())
    assert verified.signer == ALICE.public
    assert verified.nonce == NONCE
    assert verified.created == NOW


@given(secret_keys, st.sampled_from(["GET", "POST", "PUT"]), st.binary(max_size=200),
       st.sampled_from(["", "after=5", "limit=10&after=abc"]))
def test_any_request_signed_by_any_key_round_trips(
    key: SecretKey, method: str, body: bytes, query: str
) -> None:
    headers = signed(key, method=method, body=body, query=query)
    assert verify(headers, method=method, body=body, query=query).signer == key.public


def test_an_empty_body_is_covered_by_a_digest_too() -> None:
    headers = signed(body=b"", method="GET")
    assert headers["content-digest"] == content_digest(b"")
    assert verify(headers, method="GET", body=b"").signer == ALICE.public
    assert refusal(headers, method="GET", body=b"x") == "bad_digest"


# --- the signature base, per RFC 9421 §2.5 ------------------------------------------------------

# RFC 8032 §7.1 TEST 1: secret key 9d61b1…7f60, public key d75a98…511a.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

GOLDEN_BASE = (
    '"@method": POST\n'
    '"@path": /federation/prepare\n'
    '"@query": ?a=1&b=2\n'
    # RFC 9530 §2's example: the SHA-256 of {"hello": "world"}
    '"content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n'
    '"@signature-params": ("@method" "@path" "@query" "content-digest");created=1700000000;'
    'nonce="bm9uY2Utbm9uY2Utbm9uY2U";keyid="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";'
    'tag="0123456789abcdef";alg="ed25519"'
)


def test_the_signature_base_has_rfc9421_shape_for_a_fixed_example() -> None:
    key = SecretKey(RFC8032_SEED)
    assert key.public.raw == RFC8032_PUBLIC
    headers = sign_request(key, method="post", path="/federation/prepare", query="a=1&b=2",
                           body=BODY, recipient_key_id="0123456789abcdef", created=NOW,
                           nonce=NONCE)
    assert headers["Content-Digest"] == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    params = GOLDEN_BASE.rsplit('"@signature-params": ', 1)[1]
    assert headers["Signature-Input"] == "tally=" + params
    base = signature_base("post", "/federation/prepare", "a=1&b=2",
                          headers["Content-Digest"], params)
    assert base == GOLDEN_BASE.encode()
    # The Signature header is an Ed25519 signature over exactly these bytes.
    sig = headers["Signature"].removeprefix("tally=:").removesuffix(":")
    assert key.public.verify(GOLDEN_BASE.encode(), base64.b64decode(sig))


def test_an_absent_query_is_a_lone_question_mark() -> None:
    # RFC 9421 §2.2.7: with no query, the @query component value is "?".
    base = signature_base("GET", "/balance", "", "sha-256=:x:", "()")
    assert b'"@query": ?\n' in base


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", [("signature", "signature-input"), ("signature",), ("signature-input",)])
def test_unsigned_requests_are_refused(drop: tuple[str, ...]) -> None:
    headers = {k: v for k, v in signed().items() if k not in drop}
    assert refusal(headers) == "signature_required"


@pytest.mark.parametrize(
    ("header", "spoil"),
    [
        ("signature-input", lambda v: v.replace('alg="ed25519"', 'alg="rsa-pss-sha512"')),
        ("signature-input", lambda v: v.replace('"@query" ', "")),  # covers less than the profile
        ("signature-input", lambda v: v.replace("tally=", "other=")),
        ("signature-input", lambda v: v.replace(f"created={NOW}", "created=-5")),
        ("signature-input", lambda v: v.replace(NONCE, "short")),
        ("signature", lambda v: v.replace("tally=:", "tally=")),
        ("signature", lambda v: v[:-4] + ":"),
        ("signature", lambda v: "garbage"),
    ],
)
def test_signature_headers_outside_the_profile_are_malformed(
    header: str, spoil: Callable[[str], str]
) -> None:
    headers = signed()
    headers[header] = spoil(headers[header])
    assert refusal(headers) == "malformed_signature"


def test_a_keyid_that_is_not_a_public_key_is_malformed() -> None:
    headers = signed()
    # 43 characters of base64url, but with the two spare bits of the last one set.
    headers["signature-input"] = headers["signature-input"].replace(ALICE.public.text, "A" * 42 + "B")
    assert refusal(headers) == "malformed_signature"


def test_a_request_signed_for_another_node_is_refused() -> None:
    headers = signed(recipient=key_for("another node").public.key_id)
    assert refusal(headers) == "wrong_recipient"


@pytest.mark.parametrize("offset", [SKEW + 1, -(SKEW + 1), 10 * SKEW, -10 * SKEW])
def test_stale_or_future_requests_are_refused(offset: int) -> None:
    headers = signed(created=NOW - offset)
    with pytest.raises(SignedRequestError) as err:
        verify(headers)
    assert err.value.code == "stale_request"
    assert "clock" in err.value.message


@pytest.mark.parametrize("offset", [SKEW, -SKEW, 0])
def test_requests_exactly_at_the_allowed_skew_are_accepted(offset: int) -> None:
    assert verify(signed(created=NOW - offset)).created == NOW - offset


def test_a_changed_body_is_refused_by_its_digest() -> None:
    assert refusal(signed(), body=b'{"hello": "world!"}') == "bad_digest"


def test_a_missing_digest_is_refused() -> None:
    headers = signed()
    del headers["content-digest"]
    assert refusal(headers) == "bad_digest"


def test_a_digest_recomputed_for_a_changed_body_breaks_the_signature() -> None:
    body = b'{"hello": "mallory"}'
    headers = signed()
    headers["content-digest"] = content_digest(body)
    assert refusal(headers, body=body) == "bad_signature"


@pytest.mark.parametrize(
    "change",
    [{"method": "PUT"}, {"path": "/transfers/other"}, {"query": "a=1&b=3"}, {"query": ""},
     {"path": "/Transfers"}],
)
def test_a_changed_method_path_or_query_breaks_the_signature(change: dict[str, str]) -> None:
    assert refusal(signed(), **change) == "bad_signature"


def test_a_signature_by_another_key_under_our_keyid_is_refused() -> None:
    mallory = key_for("mallory")
    headers = signed(mallory)
    headers["signature-input"] = headers["signature-input"].replace(
        mallory.public.text, ALICE.public.text
    )
    assert refusal(headers) == "bad_signature"


def test_a_changed_nonce_or_time_breaks_the_signature() -> None:
    headers = signed()
    headers["signature-input"] = headers["signature-input"].replace(NONCE, "A" * 22)
    assert refusal(headers) == "bad_signature"
    headers = signed()
    headers["signature-input"] = headers["signature-input"].replace(
        f"created={NOW}", f"created={NOW - 1}"
    )
    assert refusal(headers) == "bad_signature"
