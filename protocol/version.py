"""Versions of the node-to-node protocol, and how two nodes agree on one.

Layer: protocol (pure). ``docs/protocol.md`` specifies version 1: its messages, signatures,
state machines and timing rules. A later version changes any of those.

How two nodes agree (``docs/protocol.md`` §Versioning):

- each node lists the versions it speaks in ``GET /v1/info`` as ``protocols`` (a node that
  lists none speaks only version 1, the version before negotiation existed);
- the sender picks the highest version both speak (``choose``) and sends it on every
  node-to-node request as the header ``Tally-Protocol: <version>``; with none in common it
  sends nothing and fails locally with ``unsupported_protocol``;
- the receiver refuses a request whose header names a version it does not speak with a 400
  problem ``unsupported_protocol`` listing its own ``protocols``; a request without the
  header is version 1. Every answer to a node-to-node request carries the header too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HEADER = "Tally-Protocol"
VERSION = 1  # what this implementation speaks best
SUPPORTED = (1,)  # every version it speaks, lowest first
DEFAULT = 1  # what a request without the header, or a node listing none, speaks

_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}\Z")


def parse_header(value: str | None) -> int | None:
    """The version a ``Tally-Protocol`` header names; ``DEFAULT`` when absent, None when it is
    not a positive decimal integer (which no version can be)."""
    if value is None:
        return DEFAULT
    value = value.strip()
    return int(value) if _VERSION_RE.match(value) else None


def choose(ours: Iterable[int], theirs: Iterable[int] | None) -> int | None:
    """The highest version both sides speak, or None. ``theirs`` is None when the other node
    lists no ``protocols`` (it predates negotiation: it speaks ``DEFAULT`` only)."""
    common = set(ours) & (set(theirs) if theirs is not None else {DEFAULT})
    return max(common) if common else None
