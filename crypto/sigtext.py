"""How a signature is written in Tally's JSON, and its 64 bytes back: its one spelling.

Layer: crypto (pure; the standard library only, so that ``python -m node.sigworker``, which
needs nothing else from Tally, starts in a few tens of milliseconds).
"""

from __future__ import annotations

import base64
import re
from typing import Any

SIG_RE = re.compile(r"^[A-Za-z0-9_-]{86}\Z")


def signature_bytes(sig: Any) -> bytes | None:
    """The 64 bytes of a signature written in its one canonical spelling (86 characters of
    unpadded base64url, the 4 unused bits zero); None for anything else (then it does not
    verify, as ``crypto.keys.verify_object`` says)."""
    if type(sig) is str and len(sig) == 86 and sig[-1] in "AQgw" and SIG_RE.match(sig):
        return base64.urlsafe_b64decode(sig + "==")
    return None
