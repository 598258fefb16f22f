"""A signature-checking worker process, fed over its standard input by a node's event loop.

    python -m node.sigworker      # started by ``node.service.SigWorkers``, not by hand

Layer: node (no asyncio here: it blocks on its pipe). Once it has imported what it needs it
writes ``READY`` (a fixed line), then answers each frame in by one frame out, in order; a
frame holds parts, each answered in turn:

    in:  u32 length, then per part: u8 kind, u32 length, the part
    out: u32 length, then per part: u32 length, its answer

    kind 0, signatures: per signature, u16 len + the signature as written (base64url),
            32 bytes of public key, u32 len + the bytes it signs;
            answer: one byte per signature, 1 if it verifies, else 0
    kind 1, a ``POST /v1/transfers`` body;
    kind 2, u32 most transfers allowed + a ``POST /v1/transfers/batch`` body;
            answer (both): its transfers parsed and their signatures checked
            (``node.intake.read_transfers``)

The worker exits when its standard input closes: when the node stops, or dies (a SIGKILLed
node's pipes close with it, so no worker outlives it). It ignores SIGINT and SIGTERM, which
a Ctrl-C sends to the node's whole process group and systemd to the service's whole cgroup:
the node, stopping, still needs it for the requests it finishes, then stops it by closing
its input (SIGKILL still stops it at once). It never
writes anything else to standard output; errors go to standard error, and a malformed frame
(or input that ends inside one) ends the worker (the node then fails the jobs it had sent
and starts another).

Why a process and a pipe, not a thread or ``concurrent.futures``: libsodium releases the GIL,
but a thread must win it back after every signature from a busy event loop, which keeps it up
to the switch interval (5 ms) at a time; and a process pool hands each result back through a
thread of the node that needs the GIL too. Here the event loop reads the answer itself, as it
reads a socket.
"""

from __future__ import annotations

import signal
import struct
import sys

from crypto.keys import ed25519_verify
from crypto.sigtext import signature_bytes

HEADER = struct.Struct(">I")
# Written once, before any answer, when the worker has imported all it needs: from then on
# the node counts how long it takes to answer (``node.service.SigWorkers``).
READY = b"tally-sigworker-ready\n"
PART = struct.Struct(">BI")
SIG_LEN = struct.Struct(">H")
MSG_LEN = struct.Struct(">I")

SIGNATURES, TRANSFER, BATCH = 0, 1, 2  # the kinds of part


Job = tuple[str, bytes, bytes]  # (signature as written, public key, the bytes it signs)
Part = tuple[int, bytes]  # (kind, what it carries)


def open_signed(jobs: list[Job]) -> list[bool]:
    """Each job's verdict: its signature, in its one spelling, verifies over its bytes with
    its key. One libsodium call per job (it releases the GIL)."""
    out = []
    for sig, pk, body in jobs:
        raw = signature_bytes(sig)
        out.append(raw is not None and ed25519_verify(pk, body, raw))
    return out


def encode_signatures(jobs: list[Job]) -> bytes:
    """A signatures part for ``jobs``."""
    parts: list[bytes] = []
    for sig, pk, body in jobs:
        raw = sig.encode("utf-8", "replace") if type(sig) is str else b""
        parts += (SIG_LEN.pack(len(raw)), raw, pk, MSG_LEN.pack(len(body)), body)
    return b"".join(parts)


def decode_signatures(data: bytes) -> list[Job]:
    """The jobs of a signatures part."""
    jobs: list[Job] = []
    view = memoryview(data)
    at, end = 0, len(data)
    while at < end:
        (n,) = SIG_LEN.unpack_from(view, at)
        sig = bytes(view[at + 2 : at + 2 + n]).decode("utf-8", "replace")
        at += 2 + n
        pk = bytes(view[at : at + 32])
        (m,) = MSG_LEN.unpack_from(view, at + 32)
        at += 36
        jobs.append((sig, pk, bytes(view[at : at + m])))
        at += m
    if at != end:
        raise ValueError("a signatures part ends inside a signature")
    return jobs


def encode_frame(parts: list[Part]) -> bytes:
    """One frame (with its length) holding ``parts``."""
    chunks: list[bytes] = []
    for kind, data in parts:
        chunks += (PART.pack(kind, len(data)), data)
    payload = b"".join(chunks)
    return HEADER.pack(len(payload)) + payload


def answer_part(kind: int, data: bytes) -> bytes:
    """The answer to one part."""
    if kind == SIGNATURES:
        return bytes(open_signed(decode_signatures(data)))
    from node.intake import read_transfers  # (it imports this module)

    if kind == TRANSFER:
        return read_transfers(data, 0)
    if kind == BATCH:
        (most,) = HEADER.unpack_from(data)
        return read_transfers(data[HEADER.size :], max(1, most))
    raise ValueError(f"no such kind of part: {kind}")


def answer_frame(payload: bytes) -> bytes:
    """The answers to one frame's parts (``encode_frame`` without its length), each with
    its length."""
    out: list[bytes] = []
    view = memoryview(payload)
    at, end = 0, len(payload)
    while at < end:
        if end - at < PART.size:
            raise ValueError("a frame ends inside a part's header")
        kind, n = PART.unpack_from(view, at)
        at += PART.size
        if end - at < n:
            raise ValueError("a frame ends inside a part")
        answer = answer_part(kind, bytes(view[at : at + n]))
        at += n
        out += (HEADER.pack(len(answer)), answer)
    return b"".join(out)


def split_answers(payload: bytes) -> list[bytes]:
    """The answers in an answer frame's payload, in order."""
    answers = []
    at, end = 0, len(payload)
    while at < end:
        (n,) = HEADER.unpack_from(payload, at)
        answers.append(payload[at + 4 : at + 4 + n])
        at += 4 + n
    return answers


def _read_exactly(stream: object, n: int) -> bytes | None:
    data = stream.read(n)  # type: ignore[attr-defined]
    if not data:
        return None
    while len(data) < n:
        more = stream.read(n - len(data))  # type: ignore[attr-defined]
        if not more:
            raise ValueError("standard input closed inside a frame")
        data += more
    return data  # type: ignore[no-any-return]


def main() -> int:
    # Ctrl-C reaches the whole process group, and systemd's stop the whole cgroup: the node
    # then stops, closes our input, and we end at its end, after answering the jobs it still
    # waits for. SIGKILL still stops us at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    import node.intake  # noqa: F401 - imported now, so that READY means ready for any part

    stdout.write(READY)
    stdout.flush()
    while True:
        header = _read_exactly(stdin, HEADER.size)
        if header is None:
            return 0  # the node closed the pipe: stop
        (length,) = HEADER.unpack(header)
        payload = _read_exactly(stdin, length) if length else b""
        if payload is None:
            raise ValueError("standard input closed inside a frame")
        answer = answer_frame(payload)
        stdout.write(HEADER.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
