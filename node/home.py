"""The member's home directory: their key, and what the client remembers between runs.

Layer: node. ``~/.tally`` by default (or ``$TALLY_HOME``, or ``--home``)::

    member.key      the member's Ed25519 key (mode 0600), made by `tally key new`
    client.json     the node URL and handle last used, so they need not be typed again
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crypto.keys import SecretKey, read_key_file, write_key_file

MEMBER_KEY = "member.key"
CLIENT_FILE = "client.json"
DEFAULT_NODE = "http://127.0.0.1:7300"


def default_home() -> Path:
    if env := os.environ.get("TALLY_HOME"):
        return Path(env)
    return Path.home() / ".tally"


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def key_path(self) -> Path:
        return self.path / MEMBER_KEY

    def has_key(self) -> bool:
        return self.key_path.exists()

    def new_key(self) -> SecretKey:
        key = SecretKey.from_random(os.urandom(32))
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        write_key_file(self.key_path, "tally-member", key)
        return key

    def key(self) -> SecretKey:
        return read_key_file(self.key_path)[1]

    def settings(self) -> dict[str, Any]:
        path = self.path / CLIENT_FILE
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def remember(self, **values: Any) -> None:
        doc = self.settings()
        changed = {k: v for k, v in values.items() if v is not None and doc.get(k) != v}
        if not changed:
            return
        doc.update(changed)
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (CLIENT_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path / CLIENT_FILE)
