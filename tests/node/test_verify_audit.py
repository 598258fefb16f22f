"""`tally verify` (a member checks the log about their own transfers) and `tally audit` (anyone
checks the whole log), against an in-process node that keeps honest books, then against one
whose database was tampered with, that signs with another key, forks or shrinks its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crypto import merkle
from crypto.checkpoint import format_checkpoint, parse_checkpoint
from crypto.keys import SecretKey, write_key_file
from crypto.note import format_verifier_key, open_note, parse_verifier_key, sign_note
from node import storage
from node.audit import AuditFailed, audit_log, http_source
from node.checkpoints import SignedCheckpoint, log_origin, log_signer
from node.cli import main as cli_main
from node.client import TallyClient, transfer_body
from node.config import ApiSettings, Config, LogSettings
from node.verify import VerificationFailed, verify_member
from tests.node.conftest import Collective, start_collective

CONFIG = Config(
    log=LogSettings(checkpoint_delay_ms=100),
    api=ApiSettings(rate_per_key_per_second=1e6, rate_burst=1_000_000),
)


@contextlib.asynccontextmanager
async def collective(tmp_path: Path) -> AsyncIterator[Collective]:
    server, coop = await start_collective(tmp_path, CONFIG)
    try:
        yield coop
    finally:
        await coop.client.close()
        await server.close()


@pytest.fixture
async def books(tmp_path: Path) -> AsyncIterator[tuple[Collective, SecretKey]]:
    """A collective with a few transfers, all covered by a checkpoint; and carol's key."""
    async with collective(tmp_path) as coop:
        carol = await coop.add_member("carol")
        await pay(coop, "alice", "bob", 30, coop.alice)
        await pay(coop, "bob", "alice", 12, coop.bob)
        await pay(coop, "alice", "bob", 7, coop.alice)
        await pay(coop, "bob", "carol", 5, coop.bob)
        await wait_covered(coop, coop.node.ledger.size)
        yield coop, carol


async def pay(coop: Collective, payer: str, payee: str, amount: int, key: SecretKey) -> dict[str, Any]:
    body = transfer_body(key, coop.node.ledger.ledger_id, payer, payee, amount)
    receipt = await coop.client.submit_transfer(body)
    assert receipt["result"] == "ok", receipt
    return receipt


async def wait_covered(coop: Collective, size: int, timeout: float = 10.0) -> SignedCheckpoint:
    deadline = time.monotonic() + timeout
    cp = coop.node.checkpointer
    assert cp is not None
    while cp.latest is None or cp.latest.checkpoint.size < size:
        assert time.monotonic() < deadline, f"no checkpoint covering {size}"
        await asyncio.sleep(0.01)
    return cp.latest


def make_home(path: Path, key: SecretKey) -> Path:
    path.mkdir(parents=True)
    write_key_file(path / "member.key", "tally-member", key)
    return path


def run_cli(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `tally ARGV` in a thread (it runs its own event loop) while the node serves here."""
    capsys.readouterr()
    code = await asyncio.to_thread(run_cli, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def tamper(coop: Collective, sql: str, *params: Any) -> None:
    db = sqlite3.connect(coop.node.data_dir / storage.DB_FILE)
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


def entry_at(coop: Collective, index: int) -> bytes:
    db = sqlite3.connect(f"file:{coop.node.data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        return bytes(db.execute("SELECT entry FROM log WHERE idx = ?", (index,)).fetchone()[0])
    finally:
        db.close()


def vkey_of(coop: Collective) -> str:
    origin = log_origin(coop.node.ledger.ledger_id)
    return format_verifier_key(origin, 0x01, coop.node.node_key.public.raw)


def freeze_checkpoints(coop: Collective, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the node signing new checkpoints, so a patched ``latest`` stays served."""
    assert coop.node.writer is not None
    monkeypatch.setattr(coop.node.writer, "on_commit", None)


# --- the honest node --------------------------------------------------------------------------


async def test_an_audit_of_a_live_node_compares_balances_at_the_size_they_were_read(
    books: tuple[Collective, SecretKey], capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    # An auditor audits a node in use: members pay and stewards admit while it runs. The
    # balances the node serves and the checkpoint are read at different moments; compared
    # as they were, any entry logged in between failed the audit ("differ: cyg", found by
    # a hostile test right after an admission). The node now says which log size its
    # balances reflect, and they are compared with the replay at that size.
    coop, _ = books
    async with coop.as_member(coop.alice) as client:
        served = await client.accounts_at()
        assert served["log_size"] == coop.node.ledger.size
        await coop.add_member("dora")  # logged after the balances were read
        await pay(coop, "alice", "bob", 4, coop.alice)
        await wait_covered(coop, coop.node.ledger.size)

        async def then_served() -> dict[str, Any]:
            return served

        report = await audit_log(http_source(client), vkey=vkey_of(coop),
                                 served_accounts=then_served)
        assert report.passed, report.checks
        assert report.size == served["log_size"] + 2
        assert any(f"equals the replayed one at entry {served['log_size']}" in text
                   for _, text in report.checks), report.checks

        # Balances the node says are of more entries than any checkpoint yet: not
        # comparable now, said so (not a failure; nothing was shown to differ).
        ahead = {**served, "log_size": coop.node.ledger.size + 5}

        async def served_ahead() -> dict[str, Any]:
            return ahead

        report = await audit_log(http_source(client), vkey=vkey_of(coop),
                                 served_accounts=served_ahead, checkpoint_wait=0.2)
        assert report.passed, report.checks
        assert any("served balances not compared" in text for _, text in report.checks)

        # A node whose served balances differ from its own log at that size still fails.
        wrong = {**served, "accounts": [{**a, "balance": a["balance"] + 1}
                                        if a["handle"] == "bob" else a
                                        for a in served["accounts"]]}

        async def served_wrong() -> dict[str, Any]:
            return wrong

        report = await audit_log(http_source(client), vkey=vkey_of(coop),
                                 served_accounts=served_wrong)
        assert not report.passed
        assert any(not ok and "differ: bob" in text for ok, text in report.checks)


async def test_verify_and_audit_pass_on_honest_books_and_say_what_they_checked(
    books: tuple[Collective, SecretKey], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coop, _ = books
    size = coop.node.ledger.size
    home = tmp_path / "alice"
    async with coop.as_member(coop.alice) as client:
        first = await verify_member(client, "alice", home)
        assert first.checkpoint_size == size and first.previous_size is None
        assert first.entries_checked == 3  # alice's three transfers
        assert any("pinned the log key" in line for line in first.lines)
        state = home / "logs" / coop.node.ledger.ledger_id
        assert (state / "vkey").read_text().strip() == vkey_of(coop)
        proofs = sorted(p.name for p in (state / "proofs").iterdir())
        assert len(proofs) == 3
        second = await verify_member(client, "alice", home)
        assert second.previous_size == size and second.entries_checked == 0
        assert any("consistent with the checkpoint you saw before" in l for l in second.lines)
        again = await verify_member(client, "alice", home, recheck_all=True)
        assert again.entries_checked == 3

        report = await audit_log(http_source(client), vkey=vkey_of(coop),
                                 served_accounts=client.accounts)
    assert report.passed, report.checks
    assert report.size == size
    assert report.balances == {"alice": -25, "bob": 20, "carol": 5}
    texts = " | ".join(text for _, text in report.checks)
    for said in ("checkpoint signature verifies", "entries hash to the signed root",
                 "hash tiles match", "apply under the ledger rules", "balances sum to zero",
                 "equals the replayed one"):
        assert said in texts, said

    cli_home = make_home(tmp_path / "alice-cli", coop.alice)
    code, out, err = await cli(capsys, "verify", "--home", str(cli_home), "--node", coop.url)
    assert code == 0, err
    assert "checkpoint signature verifies" in out
    assert "The node's log checks out for alice." in out
    code, out, err = await cli(capsys, "audit", "--home", str(cli_home), "--node", coop.url,
                               "--vkey", vkey_of(coop))
    assert code == 0, err
    assert f"AUDIT PASSED: {size} entries checked" in out


async def test_balance_runs_verification(
    books: tuple[Collective, SecretKey], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coop, _ = books
    home = make_home(tmp_path / "bob", coop.bob)
    code, out, err = await cli(capsys, "balance", "--home", str(home), "--node", coop.url)
    assert code == 0, err
    assert "bob" in out
    assert f"(log verified: checkpoint {coop.node.ledger.size}, 4 new entries of yours checked)" in out
    pinned = home / "logs" / coop.node.ledger.ledger_id / "vkey"
    assert pinned.read_text().strip() == vkey_of(coop)

    # With a pinned key the node does not serve, `balance` says so instead of a balance.
    other = format_verifier_key(log_origin(coop.node.ledger.ledger_id), 0x01, bytes(range(32)))
    pinned.write_text(other + "\n")
    code, out, err = await cli(capsys, "balance", "--home", str(home), "--node", coop.url)
    assert code == 1
    assert "VERIFICATION FAILED" in err and "not the same log" in err
    code, out, err = await cli(capsys, "balance", "--no-verify", "--home", str(home),
                               "--node", coop.url)
    assert code == 0, err
    assert "log verified" not in out


# --- a tampered database ----------------------------------------------------------------------


async def test_tampered_entry_fails_audit_naming_it_and_verify_of_its_members(
    books: tuple[Collective, SecretKey], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coop, carol = books
    keys = {"alice": coop.alice, "bob": coop.bob, "carol": carol}
    homes = {name: make_home(tmp_path / name, key) for name, key in keys.items()}
    for name, home in homes.items():
        code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", coop.url)
        assert code == 0, (name, err)

    async with coop.as_member(coop.alice) as client:
        history = await client.history("alice")
    index = next(p["index"] for p in history if p["amount"] == -7)  # alice -> bob, 7
    entry = entry_at(coop, index)
    doc = json.loads(entry)
    forged = entry.replace(f'"node_time":{doc["node_time"]}'.encode(),
                           f'"node_time":{doc["node_time"] + 1}'.encode())
    assert forged != entry
    tamper(coop, "UPDATE log SET entry = ? WHERE idx = ?", forged, index)

    async with coop.as_member(coop.steward) as client:
        report = await audit_log(http_source(client), vkey=vkey_of(coop))
    assert not report.passed
    failed = [text for ok, text in report.checks if not ok]
    assert f"entry {index} does not match the hash the log holds for it" in failed, failed

    code, out, err = await cli(capsys, "audit", "--home", str(homes["alice"]),
                               "--node", coop.url)
    assert code == 1
    assert "AUDIT FAILED" in out and f"entry {index} does not match" in out

    # Without --all the entries already checked are not fetched again; with it, they are.
    code, out, err = await cli(capsys, "verify", "--home", str(homes["alice"]), "--node", coop.url)
    assert code == 0, err
    for name in ("alice", "bob"):
        code, out, err = await cli(capsys, "verify", "--all", "--home", str(homes[name]),
                                   "--node", coop.url)
        assert code == 1, (name, out)
        assert "VERIFICATION FAILED" in err and f"entry {index}" in err, err
    code, out, err = await cli(capsys, "verify", "--all", "--home", str(homes["carol"]),
                               "--node", coop.url)
    assert code == 0, err  # carol's entry is intact


async def test_tampered_hash_tile_fails_audit(books: tuple[Collective, SecretKey]) -> None:
    coop, _ = books
    size = coop.node.ledger.size
    assert size >= 4
    # Leaf 1's stored hash is in tile 0/000 but in no root the node computes for size >= 4.
    tamper(coop, "UPDATE tree_hashes SET hash = ? WHERE idx = ?", bytes(32),
           merkle.stored_hash_index(0, 1))
    async with coop.as_member(coop.steward) as client:
        report = await audit_log(http_source(client), vkey=vkey_of(coop))
    assert not report.passed
    failed = [text for ok, text in report.checks if not ok]
    assert len(failed) == 1 and "hash tiles" in failed[0] and "tile/0/000" in failed[0], failed
    assert any(ok and "entries hash to the signed root" in text for ok, text in report.checks)


# --- the wrong key ------------------------------------------------------------------------------


async def test_audit_with_a_pinned_key_the_node_does_not_serve_fails(
    books: tuple[Collective, SecretKey], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    coop, _ = books
    origin = log_origin(coop.node.ledger.ledger_id)
    other = format_verifier_key(origin, 0x01, SecretKey(hashlib.sha256(b"k").digest()).public.raw)
    async with TallyClient(coop.url) as client:
        with pytest.raises(AuditFailed, match="not the pinned"):
            await audit_log(http_source(client), vkey=other)
    code, _, err = await cli(capsys, "audit", "--node", coop.url, "--vkey", other,
                               "--home", str(tmp_path / "nobody"))
    assert code == 1
    assert "AUDIT FAILED" in err and other in err


async def test_verify_with_another_pinned_key_fails(
    books: tuple[Collective, SecretKey], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coop, _ = books
    home = make_home(tmp_path / "alice", coop.alice)
    code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", coop.url)
    assert code == 0, err
    pinned = home / "logs" / coop.node.ledger.ledger_id / "vkey"
    other = format_verifier_key(log_origin(coop.node.ledger.ledger_id), 0x01, bytes(32))
    pinned.write_text(other + "\n")
    code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", coop.url)
    assert code == 1
    assert "VERIFICATION FAILED" in err and "you pinned" in err and other in err


# --- a node that forks or shrinks its log ---------------------------------------------------------


def evidence(state_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(state_dir.glob("evidence-*.json"))]


async def test_two_checkpoints_of_one_size_are_caught_as_a_fork(
    books: tuple[Collective, SecretKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    coop, _ = books
    home = make_home(tmp_path / "alice", coop.alice)
    code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", coop.url)
    assert code == 0, err
    state = home / "logs" / coop.node.ledger.ledger_id
    seen = (state / "checkpoint").read_bytes()
    seen_cp = parse_checkpoint(open_note(seen, [parse_verifier_key(vkey_of(coop))]).text)

    # The node signs, with its own key, another tree of the same size.
    signer = log_signer(coop.node.ledger.ledger_id, coop.node.node_key)
    text = format_checkpoint(signer.name, seen_cp.size, hashlib.sha256(b"another history").digest())
    note = sign_note(text, [signer])
    freeze_checkpoints(coop, monkeypatch)
    assert coop.node.checkpointer is not None
    monkeypatch.setattr(coop.node.checkpointer, "latest",
                        SignedCheckpoint(parse_checkpoint(text), note))

    code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", coop.url)
    assert code == 1
    assert "VERIFICATION FAILED" in err and "fork" in err
    [doc] = evidence(state)
    assert doc["earlier_checkpoint"] == seen.decode()
    assert doc["later_checkpoint"] == note.decode()
    assert str(state) in err  # the message says where the evidence is
    # Both are validly signed by the node: the evidence proves it to anyone with the key.
    verifier = parse_verifier_key(vkey_of(coop))
    for key in ("earlier_checkpoint", "later_checkpoint"):
        assert parse_checkpoint(open_note(doc[key].encode(), [verifier]).text).size == seen_cp.size
    # The member's remembered checkpoint is still the one they saw first.
    assert (state / "checkpoint").read_bytes() == seen


async def test_a_log_that_shrank_is_reported_with_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with collective(tmp_path) as coop:
        await pay(coop, "alice", "bob", 3, coop.alice)
        older = await wait_covered(coop, coop.node.ledger.size)
        await pay(coop, "alice", "bob", 4, coop.alice)
        newer = await wait_covered(coop, coop.node.ledger.size)
        assert newer.checkpoint.size > older.checkpoint.size
        home = tmp_path / "alice"
        async with coop.as_member(coop.alice) as client:
            report = await verify_member(client, "alice", home)
            assert report.checkpoint_size == newer.checkpoint.size

            freeze_checkpoints(coop, monkeypatch)
            assert coop.node.checkpointer is not None
            monkeypatch.setattr(coop.node.checkpointer, "latest", older)
            with pytest.raises(VerificationFailed, match="shrank") as failed:
                await verify_member(client, "alice", home)
    assert failed.value.evidence is not None
    doc = json.loads(failed.value.evidence.read_text())
    assert doc["reason"] == "the log shrank"
    assert doc["earlier_checkpoint"] == newer.note.decode()
    assert doc["later_checkpoint"] == older.note.decode()
    assert str(failed.value.evidence) in str(failed.value)


async def test_a_rewritten_history_fails_the_consistency_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bigger checkpoint that does not extend the one the member saw."""
    async with collective(tmp_path) as coop:
        await pay(coop, "alice", "bob", 3, coop.alice)
        seen = await wait_covered(coop, coop.node.ledger.size)
        home = tmp_path / "alice"
        async with coop.as_member(coop.alice) as client:
            await verify_member(client, "alice", home)
            await pay(coop, "alice", "bob", 4, coop.alice)
            real = await wait_covered(coop, coop.node.ledger.size)
            signer = log_signer(coop.node.ledger.ledger_id, coop.node.node_key)
            text = format_checkpoint(signer.name, real.checkpoint.size, hashlib.sha256(b"x").digest())
            freeze_checkpoints(coop, monkeypatch)
            assert coop.node.checkpointer is not None
            monkeypatch.setattr(coop.node.checkpointer, "latest",
                                SignedCheckpoint(parse_checkpoint(text), sign_note(text, [signer])))
            with pytest.raises(VerificationFailed, match="does not extend") as failed:
                await verify_member(client, "alice", home)
    assert failed.value.evidence is not None
    doc = json.loads(failed.value.evidence.read_text())
    assert doc["earlier_checkpoint"] == seen.note.decode()
    assert doc["consistency_proof"]


# --- offline audit of a saved log --------------------------------------------------------------


async def test_audit_of_a_saved_directory_works_with_the_node_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "saved"
    async with collective(tmp_path) as coop:
        await pay(coop, "alice", "bob", 3, coop.alice)
        await pay(coop, "bob", "alice", 1, coop.bob)
        size = coop.node.ledger.size
        await wait_covered(coop, size)
        home = make_home(tmp_path / "alice", coop.alice)
        vkey = vkey_of(coop)
        code, out, err = await cli(capsys, "audit", "--home", str(home), "--node", coop.url,
                                   "--save", str(saved))
        assert code == 0, err
        url = coop.url
    async with aiohttp.ClientSession() as session:  # really gone
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/log/checkpoint")

    code, out, err = await cli(capsys, "audit", "--dir", str(saved), "--vkey", vkey)
    assert code == 0, err
    assert f"AUDIT PASSED: {size} entries checked" in out
    # Wrong arguments are said to be wrong, not reported as an audit that failed.
    code, out, err = await cli(capsys, "audit", "--dir", str(tmp_path / "nope"))
    assert code == 1 and "AUDIT FAILED" not in out + err
    assert f"no saved log in {tmp_path / 'nope'}: save one with `tally audit" in err
    code, out, err = await cli(capsys, "audit", "--dir", str(saved), "--vkey", "garbage")
    assert code == 1 and "AUDIT FAILED" not in out + err
    assert "--vkey 'garbage' is not a log key" in err
    code, out, err = await cli(capsys, "audit", "--dir", str(saved), "--vkey", vkey, "--json")
    assert code == 0, err
    assert json.loads(out)["balances"] == {"alice": -2, "bob": 2}

    # The saved copy is checked, not trusted: a changed entry bundle fails offline too.
    bundle = saved / "tile" / "entries" / "000.p" / str(size)
    data = bundle.read_bytes()
    bundle.write_bytes(data.replace(b'"amount":3', b'"amount":9'))
    assert bundle.read_bytes() != data
    code, out, err = await cli(capsys, "audit", "--dir", str(saved), "--vkey", vkey)
    assert code == 1
    assert "AUDIT FAILED" in out and f"entry {size - 2} does not match" in out


async def test_a_steward_act_signed_with_a_key_that_is_no_stewards_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # The node's own key (or a member's) passed as --steward-key: "needs the signatures of
    # 1 steward(s)" alone left the operator guessing which key to give.
    async with collective(tmp_path) as coop:
        newcomer = SecretKey.from_random(bytes(range(7, 39))).public.text
        code, out, err = await cli(
            capsys, "member", "admit", "zed", newcomer, "--node", coop.url,
            "--home", str(tmp_path / "op"),
            "--steward-key", str(coop.node.data_dir / "node.key"))
        assert code == 1
        assert "not_enough_steward_signatures" in err
        assert "not the node's key, nor a member's" in err and "steward.key" in err
        assert "zed" not in {a.handle for a in coop.node.ledger.accounts.values()}


async def test_a_payment_the_cli_can_tell_is_wrong_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # From a hostile test: these reached the node and came back as "msg.payee: must be
    # 1-32 of a-z ...", "say which collective: ?to=NAME", "amount must be at least 1" (in
    # no unit), or, for --limit 0, "No transfers yet".
    async with collective(tmp_path) as coop:
        home = str(make_home(tmp_path / "alice", coop.alice))
        at = ["--home", home, "--node", coop.url]
        size = coop.node.ledger.size
        code, out, err = await cli(capsys, "pay", "BOB", "1", *at)
        assert code == 1 and "'BOB' is not a member's handle" in err and "lower case" in err
        code, out, err = await cli(capsys, "pay", "bob@", "1", *at)
        assert code == 1 and "say which collective after the @, e.g. bob@greenway" in err
        code, out, err = await cli(capsys, "pay", "bob", "0", *at)
        assert code == 1 and "pay more than zero; the smallest amount is" in err, err
        assert "hours" in err  # said in the collective's unit
        code, out, err = await cli(capsys, "history", "--limit", "0", *at)
        assert code == 2 and "must be at least 1, not 0" in err
        assert coop.node.ledger.size == size  # nothing reached the ledger
