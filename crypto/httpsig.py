"""Signed HTTP requests: a profile of RFC 9421 (HTTP Message Signatures) with RFC 9530 digests.

Layer: crypto (pure; the caller passes the clock reading in).

Members' reads and every node-to-node message are signed so that the node knows who asks,
and so that a captured request is useless anywhere else or later. The signature covers:

- the method, path and query (``@method``, ``@path``, ``@query``);
- the body, through ``Content-Digest: sha-256=:…:`` (RFC 9530), present even when empty;
- ``created`` (Unix seconds) and a random ``nonce``, so stale and replayed requests are refused;
- ``tag``: the key id of the **recipient**, so a request meant for one node fails at another;
- ``keyid``: the signer's public key. The sender is whoever holds that key, never a field.

Headers, with the label ``tally``::

    Content-Digest: sha-256=:<base64>:
    Signature-Input: tally=("@method" "@path" "@query" "content-digest");created=1700000000;\
nonce="<b64url>";keyid="<public key>";tag="<recipient key id>";alg="ed25519"
    Signature: tally=:<base64 signature>:

The signature base is RFC 9421 §2.5's: one ``"name": value`` line per component, then the
``"@signature-params"`` line. Checking the nonce against those already seen is the caller's
job (it is state); this module only says which nonce to remember and until when.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from crypto.keys import KeyFormatError, PublicKey, SecretKey

LABEL = "tally"
COMPONENTS = ('"@method"', '"@path"', '"@query"', '"content-digest"')
_INPUT_RE = re.compile(
    r'^tally=\("@method" "@path" "@query" "content-digest"\)'
    r';created=(?P<created>[0-9]{1,12})'
    r';nonce="(?P<nonce>[A-Za-z0-9_-]{16,64})"'
    r';keyid="(?P<keyid>[A-Za-z0-9_-]{43})"'
    r';tag="(?P<tag>[0-9a-f]{16})"'
    r';alg="ed25519"$'
)
_SIG_RE = re.compile(r"^tally=:(?P<sig>[A-Za-z0-9+/]{86}==):$")
_DIGEST_RE = re.compile(r"(?:^|,)\s*sha-256=:(?P<digest>[A-Za-z0-9+/]{43}=):")


class SignedRequestError(ValueError):
    """Why a signed request was refused; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VerifiedRequest:
    signer: PublicKey
    nonce: str
    created: int


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def _query_component(query: str) -> str:
    return "?" + query.lstrip("?")


def _signature_params(created: int, nonce: str, keyid: str, tag: str) -> str:
    return (
        f'({" ".join(COMPONENTS)});created={created};nonce="{nonce}";'
        f'keyid="{keyid}";tag="{tag}";alg="ed25519"'
    )


def signature_base(
    method: str, path: str, query: str, digest: str, params: str
) -> bytes:
    lines = [
        f'"@method": {method.upper()}',
        f'"@path": {path}',
        f'"@query": {_query_component(query)}',
        f'"content-digest": {digest}',
        f'"@signature-params": {params}',
    ]
    return "\n".join(lines).encode("utf-8")


def sign_request(
    key: SecretKey,
    *,
    method: str,
    path: str,
    query: str,
    body: bytes,
    recipient_key_id: str,
    created: int,
    nonce: str,
) -> dict[str, str]:
    """The headers that sign this request for the node whose key id is ``recipient_key_id``."""
    digest = content_digest(body)
    params = _signature_params(created, nonce, key.public.text, recipient_key_id)
    sig = key.sign(signature_base(method, path, query, digest, params))
    return {
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={params}",
        "Signature": f"{LABEL}=:{base64.b64encode(sig).decode()}:",
    }


def verify_request(
    *,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    recipient_key_id: str,
    now: int,
    max_skew: int,
) -> VerifiedRequest:
    """Check a signed request; return who signed it. Raises ``SignedRequestError``.

    ``headers`` must be keyed in lowercase. ``now`` and ``max_skew`` are in seconds.
    """
    sig_input = headers.get("signature-input")
    sig_header = headers.get("signature")
    if sig_input is None or sig_header is None:
        raise SignedRequestError(
            "signature_required",
            "this request must be signed by a member's or steward's key "
            "(Signature and Signature-Input headers)",
        )
    m = _INPUT_RE.match(sig_input.strip())
    s = _SIG_RE.match(sig_header.strip())
    if m is None or s is None:
        raise SignedRequestError(
            "malformed_signature", "Signature or Signature-Input is not in Tally's profile"
        )
    if m["tag"] != recipient_key_id:
        raise SignedRequestError(
            "wrong_recipient", "this request was signed for another node (tag is not our key id)"
        )
    created = int(m["created"])
    if abs(now - created) > max_skew:
        raise SignedRequestError(
            "stale_request",
            f"request was signed at {created}, {now - created:+d}s from this node's clock; "
            f"allowed skew is {max_skew}s (check the clock of the signing machine)",
        )
    digest_header = headers.get("content-digest", "")
    d = _DIGEST_RE.search(digest_header)
    expected = content_digest(body)
    if d is None or f"sha-256=:{d['digest']}:" != expected:
        raise SignedRequestError("bad_digest", "Content-Digest does not match the body")
    try:
        signer = PublicKey.parse(m["keyid"])
    except KeyFormatError as exc:
        raise SignedRequestError("malformed_signature", "keyid is not a public key") from exc
    params = sig_input.strip()[len(LABEL) + 1 :]
    base = signature_base(method, path, query, expected, params)
    if not signer.verify(base, base64.b64decode(s["sig"])):
        raise SignedRequestError("bad_signature", "request signature does not verify")
    return VerifiedRequest(signer=signer, nonce=m["nonce"], created=created)
