"""The ``tally`` command: run a node, act as a steward, pay and check as a member.

Layer: node. A thin shell over ``node.service`` (operators) and ``node.client`` (stewards and
members). Logging is configured here and nowhere else. Every command that talks to a node
takes ``--node URL`` and ``--home DIR``, remembers the URL once the command succeeded, and
prints JSON with ``--json``. Each checks first that the node serves the ledger the home met at
that URL before (``node.home.Home.check_ledger``); ``--accept-ledger ID`` moves to a new one.
A closed output pipe (``tally history --csv | head``) ends a command quietly, with status 141.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any, Literal

from crypto.keys import KeyFormatError, PublicKey, SecretKey, read_key_file
from node.client import NodeInfo, TallyClient, TallyError
from node.config import ConfigError, default_data_dir, load_config, parse_listen
from node.home import (
    DEFAULT_NODE,
    SHORT,
    AcceptMismatch,
    Home,
    LedgerChanged,
    LedgerSeen,
    default_home,
)
from node.service import STEWARD_KEY, InitError, is_initialised
from protocol.messages import HANDLE_RE, Signed, Unit, parse_signed, sign_message
from protocol.units import AmountError, format_amount, parse_amount

log = logging.getLogger("tally")


class CliError(Exception):
    """A problem the user can fix; the message says how. Exit status 1, no traceback."""


HINTS = {
    "exceeds_debit_limit": "Your balance with this payment would pass your debit limit; "
    "see `tally balance`.",
    "exceeds_credit_limit": "The payee cannot hold that much more; pay a smaller amount.",
    "unknown_signer": "This key is not admitted at {url}. If that is not your collective's "
    "node, give the right one with --node URL; otherwise show your key with `tally key show` "
    "and ask a steward there to run `tally member admit HANDLE KEY`.",
    "exceeds_line_limit": "The credit line between the two collectives is used up for now; "
    "pay less, or wait until payments the other way free it.",
    "no_route": "Your collective has no credit line with that one: `tally peer list`.",
    "account_not_found": "Check the handle; `tally balance --all` lists the accounts of your "
    "own collective.",
    "not_enough_steward_signatures": "Each --steward-key must be the key of a steward of this "
    "collective (not the node's key, nor a member's: the operator's is steward.key in the "
    "node's data directory). Sign with more steward keys (--steward-key, repeatable), or save "
    "the act with --out and collect signatures with `tally act sign`.",
    "stale_request": "This machine's clock is off; fix it (e.g. enable NTP) and retry.",
    "expired": "The signed request expired before it reached the node; retry.",
    "unreachable": "Is the node running? Start one with `tally node run`, or pass --node URL.",
    "rate_limited": "Slow down and retry in a moment.",
    "request_timeout": "The request's body did not reach the node in time; check the "
    "connection and retry.",
    "line_suspended": "The credit line is suspended: no new payments until both collectives' "
    "stewards resume it (`tally peer change LINE --resume`).",
    "exceeds_line_balance": "Settle at most what is owed on the line now: `tally peer list`.",
}


# --- output -------------------------------------------------------------------------------


def emit(args: argparse.Namespace, human: str, data: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human)


# --- shared option handling -----------------------------------------------------------------


def home_of(args: argparse.Namespace) -> Home:
    return Home(Path(args.home) if args.home else default_home())


def node_url(args: argparse.Namespace, home: Home) -> str:
    url: str = args.node or home.settings().get("node") or DEFAULT_NODE
    return url.rstrip("/")


def member_key(home: Home) -> SecretKey:
    if not home.has_key():
        raise CliError(f"no member key in {home.path}: make one with `tally key new`")
    try:
        return home.key()
    except KeyFormatError as exc:
        raise CliError(exc.message) from exc


def steward_keys(args: argparse.Namespace) -> list[SecretKey]:
    paths = [Path(p) for p in (args.steward_key or [])]
    if not paths:
        for candidate in (home_of(args).path / STEWARD_KEY, default_data_dir() / STEWARD_KEY):
            if candidate.exists():
                paths = [candidate]
                break
    if not paths:
        raise CliError(
            "no steward key found: pass --steward-key FILE (the operator's is "
            f"{default_data_dir() / STEWARD_KEY} on the node's machine)"
        )
    keys = []
    for path in paths:
        try:
            keys.append(read_key_file(path)[1])
        except FileNotFoundError as exc:
            raise CliError(f"no key file at {path}") from exc
        except KeyFormatError as exc:
            raise CliError(f"{path}: {exc.message}") from exc
    return keys


def amount_arg(text: str, unit: Unit, what: str) -> int:
    try:
        return parse_amount(text, unit)
    except AmountError as exc:
        raise CliError(f"{what}: {exc}") from exc


def payment_amount(text: str, unit: Unit) -> int:
    """A payment's amount: more than zero, said in the unit it is counted in."""
    amount = amount_arg(text, unit, "amount")
    if amount <= 0:
        raise CliError(f"amount: pay more than zero; the smallest amount is "
                       f"{format_amount(1, unit)}")
    return amount


def payee_arg(text: str) -> tuple[str, str | None]:
    """``HANDLE`` or ``HANDLE@COLLECTIVE``, checked before anything is sent."""
    handle, at, where = text.partition("@")
    if at and not where:
        raise CliError(f"{text!r}: say which collective after the @, e.g. {handle or 'bea'}"
                       "@greenway (its name as `tally peer list` shows it, or its node key)")
    if not HANDLE_RE.match(handle):
        raise CliError(f"{handle!r} is not a member's handle: 1 to 32 of a-z, 0-9, _ . and -, "
                       "starting with a letter or digit (handles are lower case)")
    return handle, (where if at else None)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _short(ledger_id: str) -> str:
    return ledger_id[:SHORT]


def check_ledger(args: argparse.Namespace, home: Home, url: str, info: NodeInfo,
                 *, record: bool = True) -> None:
    """Refuse a node that serves another ledger than the one this home met at ``url`` (a
    replaced or swapped node could show an empty history that "checks out")."""
    accept: str | None = getattr(args, "accept_ledger", None)
    served = LedgerSeen(info.ledger_id, info.name, info.log_key)
    try:
        outcome = home.check_ledger(url, served, accept=accept, record=record)
    except AcceptMismatch as exc:
        serves = f"the node at {url} serves ledger {_short(info.ledger_id)}… ({info.name!r})"
        if accept is not None and len(accept) < SHORT:
            raise CliError(f"--accept-ledger {accept!r} is too short: give at least {SHORT} "
                           f"characters of the ledger id your stewards confirm ({serves})"
                           ) from exc
        raise CliError(f"--accept-ledger {accept}: {serves}, whose id does not start so; "
                       "nothing was accepted. Check the id with your stewards, and the URL "
                       "(--node URL)") from exc
    except LedgerChanged as exc:
        if exc.same_id:
            raise CliError(
                f"the node at {url} serves ledger {_short(info.ledger_id)}… ({info.name!r}) as "
                f"before, but its log is signed with another key ({info.log_key}) than the one "
                f"pinned for it ({exc.pinned_key}). A ledger's log key never changes: this is "
                "not the same log, and nothing else was sent to it. Do not trust its answers: "
                "check the URL with your stewards (--node URL) and tell them."
            ) from exc
        was = (f"{_short(exc.before[0])}… ({exc.before_name!r})" if len(exc.before) == 1
               and exc.before_name else ", ".join(f"{_short(b)}…" for b in exc.before))
        again = (" (this home used that ledger before)"
                 if info.ledger_id in home.pinned_ledgers() else "")
        raise CliError(
            f"the node at {url} now serves another ledger: {_short(info.ledger_id)}… "
            f"({info.name!r}){again}, not {was}, the one this home used there. A node with a "
            "replaced ledger shows other balances and history, so nothing else was sent to it.\n"
            "  If the URL is wrong, give the right one with --node URL. If your stewards "
            "confirm that your collective really moved to a new ledger, check its id with "
            "them and accept it once, by running this command again with\n"
            f"    --node {url} --accept-ledger {_short(info.ledger_id)}"
        ) from exc
    if outcome == "accepted":
        print(f"tally: this home now uses ledger {_short(info.ledger_id)}… ({info.name!r}) "
              f"at {url}", file=sys.stderr)


async def with_client(
    args: argparse.Namespace,
    fn: Callable[[TallyClient, NodeInfo, Home], Awaitable[None]],
    key: SecretKey | None = None,
) -> None:
    home = home_of(args)
    url = node_url(args, home)
    async with TallyClient(url, key) as client:
        info = await client.info()
        check_ledger(args, home, url, info)
        await fn(client, info, home)
    # Only now: a URL that answered but refused (another collective's node, a mistyped
    # port) must not become where every later command goes.
    home.remember(node=url)


async def my_handle(args: argparse.Namespace, client: TallyClient, home: Home) -> str:
    explicit: str | None = getattr(args, "as_handle", None)
    if explicit:
        return explicit
    known = home.handle_at(client.url)
    if known:
        return known
    me = await client.whoami()
    if not me.get("handle"):
        raise CliError("this key is not a member's: ask a steward to admit it (`tally key show`)")
    home.remember_handle(client.url, me["handle"])
    return str(me["handle"])


# --- operator: tally node ... -----------------------------------------------------------------


def cmd_node_init(args: argparse.Namespace) -> None:
    from node.service import init_data_dir

    data = Path(args.data) if args.data else default_data_dir()
    unit = Unit(args.unit, args.unit_name or args.unit.lower(), args.scale)
    try:
        load_config(data)  # a config.toml put there first is checked now, not at first run
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}") from exc
    try:
        result = asyncio.run(init_data_dir(data, name=args.name, unit=unit))
    except InitError as exc:
        raise CliError(str(exc)) from exc
    emit(
        args,
        f"Initialised {result.name!r} in {data}\n"
        f"  ledger id     {result.ledger_id}\n"
        f"  unit          {unit.name} ({unit.code}, {unit.scale} smallest units each)\n"
        f"  node key      {result.node_key_path}\n"
        f"  steward key   {result.steward_key_path}   (keep it safe: it admits members)\n"
        f"Run it with: tally node run --data {data}",
        {"data_dir": str(data), "ledger_id": result.ledger_id, "name": result.name,
         "unit": unit.to_json(), "steward_key": str(result.steward_key_path)},
    )


async def _run_node(data: Path, listen: str | None, json_out: bool) -> None:
    from node.checkpoints import ForkRefused
    from node.server import serve, settle_collector, wait_for_stop_signal
    from node.service import Node, init_data_dir
    from node.storage import StorageError

    # The configuration is read, and refused if wrong, before anything is written: a first
    # run must not make a collective with the default name and unit and then refuse.
    config = load_config(data)
    host, port = parse_listen(listen or config.node.listen)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # `tally -v` asks for debug
        logging.getLogger().setLevel(config.node.log_level.upper())
    fresh = not is_initialised(data)
    if fresh:
        try:
            await init_data_dir(data)
        except InitError as exc:
            raise CliError(str(exc)) from exc
    try:
        node = Node(data, config)
    except KeyFormatError as exc:  # a key file others may read, or a damaged one
        raise CliError(f"refusing to start: {exc.message}") from exc
    try:
        served = await serve(node, host, port)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {host}:{port} ({exc.strerror}); "
            "choose another with --listen HOST:PORT"
        ) from exc
    except ForkRefused as exc:
        raise CliError(f"refusing to run this node: {exc}") from exc
    except StorageError as exc:
        raise CliError(f"cannot open the node in {data}: {exc}") from exc
    settle_collector()
    info = node.ledger
    message = (
        f"Tally node {info.genesis.name!r} {'initialised and ' if fresh else ''}running\n"
        f"  listening on  {served.url}\n"
        f"  data          {data}\n"
        f"  steward key   {data / STEWARD_KEY}\n"
        f"  ledger id     {info.ledger_id}\n"
        f"  log entries   {info.size}\n"
        "Admit a member: tally member admit HANDLE PUBLIC_KEY --node "
        f"{node.public_url or served.url}\n"
        "Stop with Ctrl-C."
    )
    if json_out:
        print(json.dumps({"url": served.url, "data_dir": str(data),
                          "ledger_id": info.ledger_id}), flush=True)
    else:
        print(message, flush=True)
    try:
        await wait_for_stop_signal()
    finally:
        log.info("stopping")
        await served.close()


def cmd_node_run(args: argparse.Namespace) -> None:
    data = Path(args.data) if args.data else default_data_dir()
    try:
        asyncio.run(_run_node(data, args.listen, args.json))
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}") from exc


def cmd_node_info(args: argparse.Namespace) -> None:
    from node import storage

    data = Path(args.data) if args.data else default_data_dir()
    if not is_initialised(data):
        raise CliError(f"no node in {data}: run `tally node init --data {data}`")

    async def read() -> dict[str, Any]:
        db = await storage.open_db(data / storage.DB_FILE)
        try:
            state = await storage.load_state(db)
        finally:
            await db.close()
        return {
            "data_dir": str(data),
            "name": state.genesis.name,
            "ledger_id": state.ledger_id,
            "node_key": state.genesis.node_key.text,
            "unit": state.genesis.unit.to_json(),
            "stewards": sorted(k.text for k in state.stewards),
            "threshold": state.threshold,
            "members": sum(1 for a in state.accounts.values() if a.kind == "member"),
            "log_size": state.size,
        }

    doc = asyncio.run(read())
    unit = Unit(**doc["unit"])
    shown = {**doc, "unit": f"{unit.name} ({unit.code}, {unit.scale} smallest units each)"}
    emit(
        args,
        "\n".join(f"{k:12} {v}" for k, v in shown.items() if k != "stewards")
        + f"\n{'stewards':12} " + ", ".join(doc["stewards"]),
        doc,
    )


# --- keys -------------------------------------------------------------------------------------


def cmd_key_new(args: argparse.Namespace) -> None:
    home = home_of(args)
    if home.has_key():
        raise CliError(
            f"{home.key_path} already exists; `tally key show` prints its public key "
            "(use another --home for a second identity)"
        )
    key = home.new_key()
    emit(
        args,
        f"Made a new key in {home.key_path} (keep it private; back it up).\n"
        f"Your public key:\n  {key.public.text}\n"
        "Give it to a steward of your collective, who admits you with:\n"
        f"  tally member admit YOUR_HANDLE {key.public.text}",
        {"public_key": key.public.text, "key_file": str(home.key_path)},
    )


def cmd_key_show(args: argparse.Namespace) -> None:
    key = member_key(home_of(args))
    emit(args, key.public.text, {"public_key": key.public.text})


# --- stewards ---------------------------------------------------------------------------------


async def _submit_act(
    args: argparse.Namespace, client: TallyClient, info: NodeInfo, kind: str, **fields: Any
) -> None:
    keys = steward_keys(args)
    msg = await client.build_act(kind, **fields)
    signed = sign_message(msg, *keys)
    if len(keys) < info.threshold or args.out:
        out = Path(args.out or f"act-{msg.id[:8]}.json")  # type: ignore[union-attr]
        out.write_text(json.dumps(signed.to_json(), indent=2) + "\n")
        emit(
            args,
            f"Saved the {kind} act, signed by {len(keys)} of the {info.threshold} stewards "
            f"needed, to {out}.\nOther stewards sign it with `tally act sign {out} "
            f"--steward-key FILE`; then `tally act submit {out}`.",
            {"saved": str(out), "signatures": len(keys), "needed": info.threshold},
        )
        return
    receipt = await client.submit_act(signed)
    emit(args, f"{kind}: {receipt['result']} (log index {receipt['index']})", receipt)


def _limits(args: argparse.Namespace, info: NodeInfo) -> dict[str, int]:
    debit = (
        amount_arg(args.debit_limit, info.unit, "--debit-limit")
        if args.debit_limit is not None
        else info.default_debit_limit
    )
    credit = (
        amount_arg(args.credit_limit, info.unit, "--credit-limit")
        if args.credit_limit is not None
        else info.default_credit_limit
    )
    return {"debit_limit": debit, "credit_limit": credit}


def _public_key(text: str) -> PublicKey:
    try:
        return PublicKey.parse(text)
    except KeyFormatError as exc:
        raise CliError(f"{text!r} is not a public key (43 characters, from `tally key new`)") from exc


def cmd_member_admit(args: argparse.Namespace) -> None:
    key = _public_key(args.public_key)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        await _submit_act(args, client, info, "admit", handle=args.handle, key=key,
                          **_limits(args, info))

    asyncio.run(with_client(args, run))


def cmd_member_limits(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        if args.debit_limit is None and args.credit_limit is None:
            raise CliError("give --debit-limit and/or --credit-limit")
        current = {"debit_limit": info.default_debit_limit,
                   "credit_limit": info.default_credit_limit}
        if args.debit_limit is None or args.credit_limit is None:
            client.key = steward_keys(args)[0]
            account = await client.account(args.handle)
            current = {"debit_limit": account["debit_limit"],
                       "credit_limit": account["credit_limit"]}
        limits = {
            "debit_limit": amount_arg(args.debit_limit, info.unit, "--debit-limit")
            if args.debit_limit is not None else current["debit_limit"],
            "credit_limit": amount_arg(args.credit_limit, info.unit, "--credit-limit")
            if args.credit_limit is not None else current["credit_limit"],
        }
        await _submit_act(args, client, info, "set_limits", handle=args.handle, **limits)

    asyncio.run(with_client(args, run))


def cmd_member_close(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        await _submit_act(args, client, info, "close", handle=args.handle)

    asyncio.run(with_client(args, run))


def cmd_member_rekey(args: argparse.Namespace) -> None:
    key = _public_key(args.public_key)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        await _submit_act(args, client, info, "rekey", handle=args.handle, key=key)

    asyncio.run(with_client(args, run))


def _steward_change(args: argparse.Namespace, add: bool) -> None:
    key = _public_key(args.public_key)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        current = list(info.stewards)
        if add:
            if key in current:
                raise CliError("that key is already a steward")
            new = current + [key]
        else:
            if key not in current:
                raise CliError("that key is not a steward")
            new = [k for k in current if k != key]
            if not new:
                raise CliError("a collective needs at least one steward")
        threshold = args.threshold if args.threshold is not None else min(info.threshold, len(new))
        await _submit_act(args, client, info, "set_stewards", stewards=tuple(new),
                          threshold=threshold)

    asyncio.run(with_client(args, run))


def cmd_steward_add(args: argparse.Namespace) -> None:
    _steward_change(args, add=True)


def cmd_steward_remove(args: argparse.Namespace) -> None:
    _steward_change(args, add=False)


def cmd_steward_list(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        emit(
            args,
            f"{info.threshold} of these {len(info.stewards)} must sign each act:\n"
            + "\n".join(f"  {k.text}" for k in info.stewards),
            {"threshold": info.threshold, "stewards": [k.text for k in info.stewards]},
        )

    asyncio.run(with_client(args, run))


def _load_act(path: Path) -> Signed:
    from crypto.canonical import CanonicalError, parse_json
    from protocol.messages import STEWARD_ACT_TYPES, MessageError

    try:
        return parse_signed(parse_json(path.read_bytes()), STEWARD_ACT_TYPES)
    except FileNotFoundError as exc:
        raise CliError(f"no file {path}") from exc
    except (CanonicalError, MessageError) as exc:
        raise CliError(f"{path} is not a signed act: {exc}") from exc


def cmd_act_sign(args: argparse.Namespace) -> None:
    path = Path(args.file)
    signed = _load_act(path)
    keys = steward_keys(args)
    extra = sign_message(signed.msg, *keys).sigs
    have = {s.key for s in signed.sigs}
    merged = Signed(signed.msg, signed.sigs + tuple(s for s in extra if s.key not in have))
    path.write_text(json.dumps(merged.to_json(), indent=2) + "\n")
    emit(args, f"{path} now carries {len(merged.sigs)} signature(s)",
         {"file": str(path), "signatures": len(merged.sigs)})


def cmd_act_submit(args: argparse.Namespace) -> None:
    signed = _load_act(Path(args.file))

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        receipt = await client.submit_act(signed)
        emit(args, f"{signed.msg.type}: {receipt['result']} (log index {receipt['index']})",
             receipt)

    asyncio.run(with_client(args, run))


# --- members ----------------------------------------------------------------------------------


def _find_line(listing: dict[str, Any], where: str) -> dict[str, Any]:
    """A line by the other collective's node key, key id, or pinned name (a label only: the
    key it stands for was pinned when the line was signed)."""
    matches: list[dict[str, Any]] = [
        line for line in listing["lines"]
        if where in (line["peer"]["node_key"], line["peer"]["node_key"][:16])
        or line["peer"]["name"].lower().startswith(where.lower())
        or PublicKey.parse(line["peer"]["node_key"]).key_id.startswith(where.lower())
    ]
    if not matches:
        names = ", ".join(line["peer"]["name"] for line in listing["lines"]) or "none yet"
        raise CliError(f"no credit line with {where!r} (lines with: {names}); "
                       "see `tally peer list`")
    if len(matches) > 1:
        raise CliError(f"{where!r} names several collectives; use its node key")
    return matches[0]


async def _pay_across(args: argparse.Namespace, client: TallyClient, info: NodeInfo,
                      home: Home, payee: str, where: str) -> None:
    """Pay a member of another collective: directly over a credit line with it, or through
    collectives in between. ``where`` is its node key, key id, or the start of its name."""
    payer = await my_handle(args, client, home)
    try:
        found = await client.routes(where)
    except TallyError as exc:
        if exc.code == "not_found":
            raise CliError(f"{exc.detail}; a collective is known once this one, or one of "
                           "its peers, has a credit line with it (`tally peer list`)") from exc
        raise
    collective = found["collective"]
    their_unit = Unit(**collective["unit"])
    amount = payment_amount(args.amount, their_unit)
    options = (await client.routes(collective["node_key"], amount)).get("routes", [])
    if not options:
        raise CliError(f"no path of active credit lines reaches {collective['name']} now; "
                       "see `tally peer list`")
    cost = options[0]["cost"]  # what the cheapest route costs us, rounded up at every hop
    max_pay = amount_arg(args.max, info.unit, "--max") if args.max else cost
    try:
        receipt = await client.pay_remote(payer, payee,
                                          PublicKey.parse(collective["node_key"]), amount,
                                          max_pay, memo=args.memo)
    except TallyError as exc:
        if exc.order_id and (exc.code == "unreachable" or exc.status >= 500):
            raise _outcome_unknown(exc.order_id, exc.detail) from exc
        if exc.code == "no_route" and exc.problem.get("unreachable"):
            raise CliError(f"{exc.detail}. Try again later.") from exc
        raise
    if receipt.get("result") == "pending":
        raise _outcome_unknown(receipt["order"], "it is still in flight")
    to = f"{payee}@{collective['name']}"
    via = receipt.get("route", [])[1:-1]
    received = receipt.get("amount_received", amount)
    said = f"Paid {format_amount(amount, their_unit)} to {to}"
    if received != amount:
        # Each hop rounds up what the payer sends to a whole smallest unit of hers: what
        # arrives may be more than asked, and the payee is credited all of it.
        said = (f"Paid: {to} receives {format_amount(received, their_unit)} (you asked for "
                f"{format_amount(amount, their_unit)}: you pay in whole "
                f"{format_amount(1, info.unit, False)} {info.unit.name}, and the "
                f"{format_amount(receipt['amount_paid'], info.unit)} it cost is worth that)")
    emit(
        args,
        said + (f" via {', '.join(via)}" if via else "")
        + f" (cost {format_amount(receipt['amount_paid'], info.unit)}; order {receipt['order']})",
        receipt,
    )


def _outcome_unknown(order_id: str, why: str) -> CliError:
    return CliError(
        f"the outcome of payment {order_id} is not known yet ({why}). Do NOT pay again: it "
        f"may still complete. Check it with `tally payment {order_id}`.")


def cmd_payment(args: argparse.Namespace) -> None:
    home = home_of(args)
    key = member_key(home)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        status = await client.payment(args.order)
        ours = [a for a in status["attempts"] if a["role"] == "source"] or status["attempts"]
        emit(args, _payment_state(args.order, ours), status)

    asyncio.run(with_client(args, run, key))


def _payment_state(order: str, attempts: list[dict[str, Any]]) -> str:
    """What became of a payment across collectives, from its attempts (one per route)."""
    payee = attempts[0]["payee"]
    if any(a["hold"] == "posted" for a in attempts):
        return f"Paid: {payee} was paid (order {order})."
    if any(a["hold"] == "held" for a in attempts):
        return (f"Still in flight (order {order}): do not pay again; check again in a "
                "minute.")
    last: dict[str, Any] = next((a["result"] for a in reversed(attempts) if a["result"]), {})
    return (f"Not paid: nothing moved ({last.get('result', 'voided')}: "
            f"{last.get('detail', 'voided')}). You may pay again.")


def cmd_pay(args: argparse.Namespace) -> None:
    home = home_of(args)
    key = member_key(home)

    payee, where = payee_arg(args.payee)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        if where is not None:
            await _pay_across(args, client, info, home, payee, where)
            return
        amount = payment_amount(args.amount, info.unit)
        payer = await my_handle(args, client, home)
        receipt = await client.pay(payer, args.payee, amount, memo=args.memo)
        word = "Paid" if receipt["result"] == "ok" else "Already paid"
        emit(
            args,
            f"{word} {format_amount(amount, info.unit)} to {args.payee} "
            f"(transfer {receipt['id']}, log index {receipt['index']})",
            receipt,
        )

    asyncio.run(with_client(args, run, key))


def _account_line(account: dict[str, Any], unit: Unit) -> str:
    pending = ""
    if account["pending_debit"] or account["pending_credit"]:
        pending = (f"  (pending -{format_amount(account['pending_debit'], unit, False)} "
                   f"+{format_amount(account['pending_credit'], unit, False)})")
    closed = "  [closed]" if account["status"] != "open" else ""
    return (
        f"{account['handle']:16} {format_amount(account['balance'], unit):>16}"
        f"   may go to -{format_amount(account['debit_limit'], unit, False)}"
        f" / +{format_amount(account['credit_limit'], unit, False)}{pending}{closed}"
    )


def cmd_balance(args: argparse.Namespace) -> None:
    home = home_of(args)
    key = member_key(home)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        if args.all:
            accounts = await client.accounts()
            total = sum(a["balance"] for a in accounts)
            emit(
                args,
                "\n".join(_account_line(a, info.unit) for a in accounts)
                + f"\n{'(sum)':16} {format_amount(total, info.unit):>16}",
                accounts,
            )
            return
        handle = args.handle or await my_handle(args, client, home)
        account = await client.account(handle)
        emit(args, _account_line(account, info.unit), account)
        if not args.no_verify and handle == await my_handle(args, client, home):
            from node.verify import VerificationFailed, verify_member

            try:
                report = await verify_member(client, handle, home.path)
            except VerificationFailed as exc:
                raise CliError(f"VERIFICATION FAILED: {exc}") from exc
            if not args.json:
                print(f"(log verified: checkpoint {report.checkpoint_size}, "
                      f"{report.entries_checked} new entries of yours checked)")

    asyncio.run(with_client(args, run, key))


def _other_party(posting: dict[str, Any]) -> str:
    """The other member of a posting: ``cy@Hilltop`` across collectives, even when the
    payment went through others (``counterparty`` names the adjacent one)."""
    far = posting.get("across")
    if not far:
        return str(posting["counterparty"])
    return f"{far['member']}@{far['collective'] or 'another collective'}"


def _via(posting: dict[str, Any]) -> list[str]:
    return list((posting.get("across") or {}).get("via") or [])


def cmd_history(args: argparse.Namespace) -> None:
    home = home_of(args)
    key = member_key(home)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        handle = args.handle or await my_handle(args, client, home)
        postings = await client.history(handle, limit=args.limit)
        if args.csv:
            writer = csv.writer(sys.stdout)
            writer.writerow(["index", "time_ms", "id", "counterparty", "amount",
                             f"amount_{info.unit.code.lower()}", "memo", "via"])
            for p in postings:
                writer.writerow([p["index"], p["node_time"], p["id"], _other_party(p),
                                 p["amount"], format_amount(p["amount"], info.unit, False),
                                 p["memo"] or "", "; ".join(_via(p))])
            return
        from datetime import datetime

        lines = []
        for p in postings:
            when = datetime.fromtimestamp(p["node_time"] / 1000, UTC)
            direction = "from" if p["amount"] > 0 else "to  "
            memo = f"  {p['memo']}" if p["memo"] else ""
            via = f" (via {', '.join(_via(p))})" if _via(p) else ""
            lines.append(
                f"{when:%Y-%m-%d %H:%M}  {format_amount(p['amount'], info.unit):>14}  "
                f"{direction} {_other_party(p)}{via}{memo}"
            )
        emit(args, "\n".join(lines) or f"No transfers yet for {handle}.", postings)

    asyncio.run(with_client(args, run, key))


def cmd_verify(args: argparse.Namespace) -> None:
    from node.verify import VerificationFailed, verify_member

    home = home_of(args)
    key = member_key(home)

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        handle = await my_handle(args, client, home)
        try:
            report = await verify_member(client, handle, home.path, recheck_all=args.all,
                                         witnesses=args.witnesses,
                                         witness_keys=args.witness_key or ())
        except VerificationFailed as exc:
            raise CliError(f"VERIFICATION FAILED: {exc}") from exc
        emit(
            args,
            "\n".join(report.lines) + f"\nThe node's log checks out for {handle}.",
            {"checkpoint_size": report.checkpoint_size, "previous_size": report.previous_size,
             "entries_checked": report.entries_checked, "checks": report.lines},
        )

    asyncio.run(with_client(args, run, key))


def cmd_audit(args: argparse.Namespace) -> None:
    from crypto.note import NoteError, parse_verifier_key
    from node.audit import AuditFailed, audit_log, dir_source, format_report, http_source

    # Wrong arguments are not an audit that failed: say what to give instead.
    if args.vkey is not None:
        try:
            parse_verifier_key(args.vkey)
        except NoteError as exc:
            raise CliError(f"--vkey {args.vkey!r} is not a log key ({exc}); a log key "
                           "reads like NAME+HASH+KEY, as the node serves it at /log/vkey") from exc
    if args.dir and not all((Path(args.dir) / name).is_file()
                            for name in ("vkey", "checkpoint")):
        raise CliError(f"no saved log in {args.dir}: save one with "
                       f"`tally audit --node URL --save {args.dir}`")

    async def run() -> int:
        if args.dir:
            report = await audit_log(dir_source(Path(args.dir)), vkey=args.vkey,
                                     progress=sys.stderr.isatty())
        else:
            home = home_of(args)
            key = home.key() if home.has_key() else None
            url = node_url(args, home)
            async with TallyClient(url, key) as client:
                # Checked against what this home met at the URL, but never recorded: an
                # audit of any node leaves the home as it was.
                check_ledger(args, home, url, await client.info(), record=False)
                report = await audit_log(
                    http_source(client),
                    vkey=args.vkey,
                    served_accounts=client.accounts_at if key is not None else None,
                    save=Path(args.save) if args.save else None,
                    progress=sys.stderr.isatty(),
                )
        emit(args, format_report(report), report.to_json())
        return 0 if report.passed else 1

    try:
        code = asyncio.run(run())
    except AuditFailed as exc:
        raise CliError(f"AUDIT FAILED: {exc}") from exc
    if code:
        raise SystemExit(code)


def cmd_erase_memos(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        client.key = steward_keys(args)[0]
        result = await client.erase_memos(args.handle)
        emit(args, f"Erased {result['erased']} memo(s) of {args.handle}; the log still verifies "
             "(it holds only salted hashes of memos).", result)

    asyncio.run(with_client(args, run))


def _rate(text: str, ours: Unit, theirs: Unit) -> tuple[int, int]:
    """``--rate R``: R of their units for one of ours, as smallest units of theirs per one of
    ours, a fraction in lowest terms (1 hour = 10 credits: 1000 cents per 60 minutes)."""
    from fractions import Fraction

    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise CliError(f"--rate {text!r} must be a number or a fraction like 3/2") from exc
    if value <= 0:
        raise CliError("--rate must be positive")
    smallest = value * theirs.scale / ours.scale
    return smallest.numerator, smallest.denominator


def cmd_peer_propose(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        async with TallyClient(args.url) as peer:
            theirs = await peer.info()
        num, den = _rate(args.rate, info.unit, theirs.unit)
        ours_limit = amount_arg(args.limit, info.unit, "--limit")
        their_limit = (amount_arg(args.their_limit, theirs.unit, "--their-limit")
                       if args.their_limit else ours_limit * num // den)
        result = await client.propose_line(args.url.rstrip("/"), steward_keys(args), ours_limit,
                                           their_limit, num, den)
        emit(args,
             f"Proposed a credit line to {theirs.name!r} ({theirs.node_key.key_id}): we let "
             f"them owe us up to {format_amount(ours_limit, info.unit)}, they let us owe up to "
             f"{format_amount(their_limit, theirs.unit)}; 1 {info.unit.name} = {args.rate} "
             f"{theirs.unit.name}.\nTheir stewards accept it with `tally peer accept "
             f"{result['line']}`.", result)

    asyncio.run(with_client(args, run))


def cmd_peer_accept(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        client.key = steward_keys(args)[0]
        listing = await client.lines()
        if any(x["id"] == args.line for x in listing.get("settlements", [])):
            done = await client.accept_settlement(args.line, steward_keys(args))
            emit(args, f"Settlement {args.line} is logged on both ledgers (log index "
                 f"{done.get('index')}).", done)
            return
        result = await client.accept_line(args.line, steward_keys(args))
        emit(args, f"Credit line {args.line} is {result.get('status', 'active')} "
             f"(version {result.get('version', 1)}, log index {result.get('index')}).", result)

    asyncio.run(with_client(args, run))


def cmd_peer_change(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        client.key = steward_keys(args)[0]
        line = next((x for x in (await client.lines())["lines"] if x["id"] == args.line), None)
        if line is None:
            raise CliError(f"no credit line {args.line}: see `tally peer list`")
        their_unit = Unit(**line["peer"]["unit"])
        status: Literal["active", "suspended"] | None = (
            "suspended" if args.suspend else "active" if args.resume else None)
        result = await client.change_line(
            args.line, steward_keys(args),
            amount_arg(args.limit, info.unit, "--limit") if args.limit else None,
            amount_arg(args.their_limit, their_unit, "--their-limit") if args.their_limit
            else None,
            status,
        )
        emit(args, f"Proposed the next version of line {args.line}; it takes effect when "
             f"{line['peer']['name']}'s stewards run `tally peer accept {args.line}`.", result)

    asyncio.run(with_client(args, run))


def cmd_peer_suspend(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        client.key = steward_keys(args)[0]
        line = _find_line(await client.lines(), args.peer)
        result = await client.suspend_line(line["id"], steward_keys(args))
        told = ("they were told" if result.get("delivered") else
                "they could not be told yet: run this again to resend it")
        emit(args, f"Credit line with {line['peer']['name']} is suspended (version "
             f"{result['version']}): no new payments either way; {told}. Payments in flight "
             f"still settle. Resume with `tally peer change {line['id']} --resume` (both sides "
             "must agree).", result)

    asyncio.run(with_client(args, run))


def cmd_peer_settle(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        client.key = steward_keys(args)[0]
        line = _find_line(await client.lines(), args.peer)
        amount = amount_arg(args.amount, info.unit, "amount")
        balance = line["account"]["balance"] if line["account"] else 0
        if balance == 0:
            raise CliError(f"nothing is owed on the line with {line['peer']['name']}: "
                           "nothing to settle")
        if amount > abs(balance):
            raise CliError(f"only {format_amount(abs(balance), info.unit)} is owed on the line "
                           f"with {line['peer']['name']}: settle at most that")
        result = await client.propose_settlement(line["id"], steward_keys(args), amount,
                                                 args.reference or "")
        who = "we paid them" if balance > 0 else "they paid us"
        emit(args, f"Proposed settlement {result['settlement']}: {who} "
             f"{format_amount(amount, info.unit)} outside Tally. It is logged when "
             f"{line['peer']['name']}'s stewards run `tally peer accept "
             f"{result['settlement']}`.", result)

    asyncio.run(with_client(args, run))


def _dispute_line(d: dict[str, Any]) -> str:
    from datetime import datetime

    when = datetime.fromtimestamp(d["created"] / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    state = f"resolved: {d['note']}" if d["resolved"] else "open"
    return (f"{d['id']}  {d['kind']:18} {d['peer_name'] or d['peer']:20} {when}  {state}"
            f"\n    line {d['line']}, attempt {d['attempt']}")


def cmd_disputes(args: argparse.Namespace) -> None:
    key = steward_keys(args)[0]

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        disputes = await client.disputes(include_resolved=args.all)
        emit(args, "\n".join(_dispute_line(d) for d in disputes) or
             ("No disputes." if args.all else "No open disputes (`--all` shows resolved "
              "ones)."), disputes)

    asyncio.run(with_client(args, run, key))


def cmd_disputes_resolve(args: argparse.Namespace) -> None:
    key = steward_keys(args)[0]

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        result = await client.resolve_dispute(args.id, args.note)
        emit(args, f"Dispute {args.id} is marked resolved.", result)

    asyncio.run(with_client(args, run, key))


def _owed(balance: int, unit: Unit) -> str:
    """A peer account's balance on our ledger, said with its direction: debited (below zero),
    they owe us; credited, we owe them."""
    if balance < 0:
        return f"they owe us {format_amount(-balance, unit)}"
    if balance > 0:
        return f"we owe them {format_amount(balance, unit)}"
    return "nothing owed either way"


def _terms(terms: dict[str, Any], me: str) -> str:
    """A line's terms as seen from our side (``me``: our node key)."""
    from fractions import Fraction

    ours: Literal["a", "b"] = "a" if terms["a"]["node_key"] == me else "b"
    theirs = "b" if ours == "a" else "a"
    us, them = Unit(**terms[ours]["unit"]), Unit(**terms[theirs]["unit"])
    # The line converts a's smallest units to b's at rate_num/rate_den.
    smallest = Fraction(terms["rate_num"], terms["rate_den"])
    rate = (smallest if ours == "a" else 1 / smallest) * us.scale / them.scale
    shown = str(rate) if rate.denominator == 1 else f"{float(rate):.6g}"
    return (f"v{terms['version']} {terms['status']}: they may owe us "
            f"{format_amount(terms[f'{ours}_limit'], us)}, we may owe them "
            f"{format_amount(terms[f'{theirs}_limit'], them)}; 1 {us.name} = {shown} "
            f"{them.name}")


def cmd_peer_list(args: argparse.Namespace) -> None:
    home = home_of(args)
    key = home.key() if home.has_key() else steward_keys(args)[0]

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        listing = await client.lines()
        out = []
        me = info.node_key.text
        for line in listing["lines"]:
            acc = line["account"]
            unit = info.unit
            out.append(
                f"{line['peer']['name']:24} {line['status']:9} key {line['peer']['node_key'][:16]}"
                f"\n    {_owed(acc['balance'], unit)}"
                f" (they may owe us {format_amount(acc['debit_limit'], unit)},"
                f" we may owe them {format_amount(acc['credit_limit'], unit)})"
                f"; in flight -{format_amount(acc['pending_debit'], unit, False)}"
                f" +{format_amount(acc['pending_credit'], unit, False)}"
                f"\n    line {line['id']} v{line['version']} at {line['peer_url']}"
            )
        for p in listing["proposals"]:
            terms = p["terms"]
            other = terms["a"] if terms["b"]["node_key"] == me else terms["b"]
            if p.get("by") == "ours":
                out.append(f"proposal {p['id']} to {other['name']!r}, waiting for their "
                           f"stewards\n    {_terms(terms, me)}")
            else:
                out.append(f"proposal {p['id']} from {other['name']!r}\n    "
                           f"{_terms(terms, me)}\n    accept with `tally peer accept {p['id']}`")
        for x in listing.get("settlements", []):
            terms = x["terms"]
            if x["by"] == "theirs":
                out.append(f"settlement {x['id']} proposed to us ({terms['reference']!r}): "
                           f"accept with `tally peer accept {x['id']}`")
            else:
                out.append(f"settlement {x['id']} proposed by us, awaiting their stewards")
        emit(args, "\n".join(out) or "No credit lines yet: `tally peer propose URL --limit X`.",
             listing)

    asyncio.run(with_client(args, run, key))


def cmd_peer_status(args: argparse.Namespace) -> None:
    home = home_of(args)
    key = home.key() if home.has_key() else steward_keys(args)[0]

    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        status = await client.lines_status()
        terms = {line["id"]: line["terms"] for line in (await client.lines())["lines"]}
        out = []
        for r in status["lines"]:
            ours = r["ours"]["msg"]
            flow = f"A->B {ours['sum_a']} (A's unit), {ours['sum_b']} (B's unit)"
            if r["line"] in terms:  # in each side's own unit, by name
                a, b = terms[r["line"]]["a"], terms[r["line"]]["b"]
                flow = (f"{a['name']} -> {b['name']} "
                        f"{format_amount(ours['sum_a'], Unit(**a['unit']))} "
                        f"= {format_amount(ours['sum_b'], Unit(**b['unit']))}")
            out.append(f"{r['peer']:24} {r['verdict'].upper():11} {r['detail']}"
                       f"\n    line {r['line']} v{ours['version']}: flowed {flow}, net; "
                       f"{len(ours['in_flight'])} in flight, {ours['settled']} settlement(s)")
        if any(r["verdict"] == "mismatch" for r in status["lines"]):
            out.append("A MISMATCH means the two ledgers disagree about what flowed: both "
                       "signed statements are kept as a dispute (`tally disputes --json`); "
                       "take them to the other collective's stewards.")
        emit(args, "\n".join(out) or "No credit lines yet: `tally peer propose URL --limit X`.",
             status)
        # Exit 1 when a line needs a steward: the ledgers disagree, or the other node could
        # not be asked (down, or no longer the node the line names).
        if any(r["verdict"] in ("mismatch", "unreachable") for r in status["lines"]):
            raise SystemExit(1)

    asyncio.run(with_client(args, run, key))


def cmd_evidence_check(args: argparse.Namespace) -> None:
    from protocol.evidence import EvidenceError, parse_evidence

    try:
        doc = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CliError(f"{args.file} is not JSON: {exc}") from exc
    try:
        ev = parse_evidence(doc)
    except EvidenceError as exc:
        raise CliError(f"{args.file} proves nothing: {exc}") from exc
    emit(args, f"Valid evidence: {ev.summary()}.\nAnyone may check it again offline; the "
         f"key that signed both is {ev.offender.text}.",
         {"valid": True, "id": ev.id, "offender": ev.offender.text, "origin": ev.origin,
          "sizes": [c.size for c in ev.checkpoints]})


def cmd_peers(args: argparse.Namespace) -> None:
    async def run(client: TallyClient, info: NodeInfo, home: Home) -> None:
        doc = await client.get_json("/v1/gossip/nodes")
        out = []
        for n in doc["nodes"]:
            flags = [f for f, on in (("stale", n["stale"]), ("SUSPENDED", n["suspended"]),
                                      ("this node", n["self"])) if on]
            witnessed = n["checkpoint_size"]
            out.append(
                f"{n['name'][:24]:24} key {n['key'][:16]}  heard {n['age_seconds']}s ago"
                f"{'  [' + ', '.join(flags) + ']' if flags else ''}"
                f"\n    {' '.join(n['urls'])}  log size seen "
                f"{'-' if witnessed is None else witnessed}  lines {len(n['lines'])}"
                f"  {n['software']}")
        for ev in doc["evidence"]:
            out.append(f"EVIDENCE {ev['id'][:16]}: {ev['summary']}")
        graph = f"{len(doc['edges'])} credit line(s) in the learned graph"
        emit(args, "\n".join([*out, graph]) if out else "No nodes known yet.", doc)

    asyncio.run(with_client(args, run))


def cmd_demo(args: argparse.Namespace) -> None:
    from node.demo import run_demo

    asyncio.run(run_demo(serve_forever=args.serve, transfers=args.transfers,
                         json_out=args.json, base_port=args.port, keep=args.keep))


# --- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tally",
        description="Tally: a mutual-credit ledger for co-ops and time banks, run by its members.",
        epilog="Start here: `tally node run` (operators), `tally key new` (members), "
        "`tally demo` (try it all on this machine).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def client_parent(remembered: bool) -> argparse.ArgumentParser:
        opts = argparse.ArgumentParser(add_help=False)
        opts.add_argument(
            "--node", metavar="URL",
            help="the node's URL (default: the last one a command succeeded with, else "
            f"{DEFAULT_NODE}; " + ("remembered once the command succeeds)" if remembered
                                   else "not remembered by this command)"))
        opts.add_argument("--home", metavar="DIR",
                          help="your key and settings (default ~/.tally or $TALLY_HOME)")
        opts.add_argument("--json", action="store_true", help="print JSON")
        opts.add_argument(
            "--accept-ledger", metavar="ID",
            help="the home pins the ledger it first met at each node URL, and refuses a node "
            "there that serves another; if your collective really moved to a new ledger, "
            f"accept it with the start of its id (at least {SHORT} characters; ask your "
            "stewards)" + ("" if remembered else " (checked, not recorded, by this command)"))
        return opts

    client_opts = client_parent(remembered=True)
    steward_opts = argparse.ArgumentParser(add_help=False)
    steward_opts.add_argument("--steward-key", metavar="FILE", action="append",
                              help="a steward key file (repeat for k-of-n; default: the "
                              "operator's steward.key)")
    steward_opts.add_argument("--out", metavar="FILE",
                              help="save the signed act to FILE instead of submitting it")
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print JSON")
    data_opt = argparse.ArgumentParser(add_help=False)
    data_opt.add_argument("--data", metavar="DIR",
                          help="the node's data directory (default $TALLY_DATA or "
                          "~/.local/share/tally/node)")

    # tally node ...
    node = sub.add_parser("node", help="run and inspect this collective's node (operators)")
    nsub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    p = nsub.add_parser("init", parents=[data_opt, json_opt],
                        help="make a new collective: keys and the signed genesis entry")
    p.add_argument("--name", default="Tally collective", help="the collective's name")
    p.add_argument("--unit", default="HOUR", help="unit code, e.g. HOUR or CREDIT")
    p.add_argument("--unit-name", help="unit name people read, e.g. hours (default: the code)")
    p.add_argument("--scale", type=int, default=60,
                   help="smallest units per unit: 60 counts minutes of an hour, 100 cents")
    p.set_defaults(func=cmd_node_init)
    p = nsub.add_parser("run", parents=[data_opt, json_opt],
                        help="serve the node (initialising the data directory on first use)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where to listen (default from config, 127.0.0.1:7300)")
    p.set_defaults(func=cmd_node_run)
    p = nsub.add_parser("info", parents=[data_opt, json_opt], help="show the node's ledger")
    p.set_defaults(func=cmd_node_info)

    # tally key ...
    key = sub.add_parser("key", help="your member key")
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    p = ksub.add_parser("new", parents=[client_opts], help="make your key (stays on this machine)")
    p.set_defaults(func=cmd_key_new)
    p = ksub.add_parser("show", parents=[client_opts], help="print your public key")
    p.set_defaults(func=cmd_key_show)

    # tally member ...
    member = sub.add_parser("member", help="admit members and set their limits (stewards)")
    msub = member.add_subparsers(dest="member_command", metavar="ACTION", required=True)
    p = msub.add_parser("admit", parents=[client_opts, steward_opts],
                        help="admit a member: their handle and public key")
    p.add_argument("handle")
    p.add_argument("public_key")
    p.add_argument("--debit-limit", metavar="X", help="how far below zero (in units; "
                   "default from the node)")
    p.add_argument("--credit-limit", metavar="X", help="how far above zero")
    p.set_defaults(func=cmd_member_admit)
    p = msub.add_parser("limits", parents=[client_opts, steward_opts],
                        help="change a member's limits")
    p.add_argument("handle")
    p.add_argument("--debit-limit", metavar="X")
    p.add_argument("--credit-limit", metavar="X")
    p.set_defaults(func=cmd_member_limits)
    p = msub.add_parser("close", parents=[client_opts, steward_opts],
                        help="close an account (its balance must be zero)")
    p.add_argument("handle")
    p.set_defaults(func=cmd_member_close)
    p = msub.add_parser("erase-memos", parents=[client_opts, steward_opts],
                        help="erase a departing member's memos (the log still verifies)")
    p.add_argument("handle")
    p.set_defaults(func=cmd_erase_memos)
    p = msub.add_parser("rekey", parents=[client_opts, steward_opts],
                        help="bind a member's account to a new key (lost or stolen key)")
    p.add_argument("handle")
    p.add_argument("public_key")
    p.set_defaults(func=cmd_member_rekey)

    # tally steward ...
    steward = sub.add_parser("steward", help="change who the stewards are")
    ssub = steward.add_subparsers(dest="steward_command", metavar="ACTION", required=True)
    for name, func, text in (("add", cmd_steward_add, "add a steward"),
                             ("remove", cmd_steward_remove, "remove a steward")):
        p = ssub.add_parser(name, parents=[client_opts, steward_opts], help=text)
        p.add_argument("public_key")
        p.add_argument("--threshold", type=int, metavar="K",
                       help="how many stewards must sign each act from now on")
        p.set_defaults(func=func)
    p = ssub.add_parser("list", parents=[client_opts], help="the stewards and the threshold")
    p.set_defaults(func=cmd_steward_list)

    # tally act ...
    act = sub.add_parser("act", help="collect k-of-n steward signatures on a saved act")
    asub = act.add_subparsers(dest="act_command", metavar="ACTION", required=True)
    p = asub.add_parser("sign", parents=[client_opts, steward_opts], help="add your signature")
    p.add_argument("file")
    p.set_defaults(func=cmd_act_sign)
    p = asub.add_parser("submit", parents=[client_opts], help="submit a fully signed act")
    p.add_argument("file")
    p.set_defaults(func=cmd_act_submit)

    # members
    p = sub.add_parser("pay", parents=[client_opts], help="pay another member, here or in a "
                       "collective yours has a credit line with",
                       description="Pay another member. To another collective, the answer "
                       "says what the payee receives; if it cannot say whether the payment "
                       "went through, it prints the order id: do not pay again, ask "
                       "`tally payment ORDER`.")
    p.add_argument("payee", help="the payee's handle, or HANDLE@COLLECTIVE (its name as shown "
                   "by `tally peer list`, or its node key)")
    p.add_argument("amount", help="in the payee's collective's unit, e.g. 1.5 (hours)")
    p.add_argument("--max", metavar="X", help="across collectives: the most it may cost you, "
                   "in your unit (default: what the cheapest route costs now, rounded up at "
                   "each hop)")
    p.add_argument("--memo", help="what it is for (erasable; the log keeps only a hash). "
                   "To another collective: kept by your node only, not sent to theirs")
    p.add_argument("--as", dest="as_handle", metavar="HANDLE", help="your handle, if not known")
    p.set_defaults(func=cmd_pay)
    p = sub.add_parser("payment", parents=[client_opts],
                       help="what became of a payment to another collective, by its order id",
                       description="Ask your node what became of a payment to another "
                       "collective: paid, not paid (nothing moved; you may pay again), or "
                       "still in flight (do not pay again). `tally pay` prints the order id, "
                       "also when it cannot tell the outcome.")
    p.add_argument("order", help="the order id `tally pay` printed")
    p.set_defaults(func=cmd_payment)
    p = sub.add_parser("balance", parents=[client_opts], help="your balance and limits")
    p.add_argument("handle", nargs="?", help="another member's (open books only)")
    p.add_argument("--all", action="store_true", help="every account")
    p.add_argument("--as", dest="as_handle", metavar="HANDLE", help=argparse.SUPPRESS)
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the node's log (see `tally verify`)")
    p.set_defaults(func=cmd_balance)
    p = sub.add_parser("history", parents=[client_opts], help="your transfers, newest first")
    p.add_argument("handle", nargs="?")
    p.add_argument("--csv", action="store_true", help="CSV for a spreadsheet")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most N postings")
    p.add_argument("--as", dest="as_handle", metavar="HANDLE", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_history)

    peer = sub.add_parser("peer", help="credit lines with other collectives (stewards)")
    psub = peer.add_subparsers(dest="peer_command", metavar="ACTION", required=True)
    p = psub.add_parser("propose", parents=[client_opts, steward_opts],
                        help="propose a credit line to the collective at URL")
    p.add_argument("url", help="the other collective's node URL")
    p.add_argument("--limit", required=True, metavar="X",
                   help="how far we let them owe us, in our unit")
    p.add_argument("--their-limit", metavar="Y",
                   help="how far they let us owe them, in their unit (default: --limit at "
                   "the rate)")
    p.add_argument("--rate", default="1", metavar="R",
                   help="how many of their units one of ours is worth, e.g. 10 or 3/2 "
                   "(default 1)")
    p.set_defaults(func=cmd_peer_propose)
    p = psub.add_parser("accept", parents=[client_opts, steward_opts],
                        help="accept a proposed credit line")
    p.add_argument("line", help="the line id `tally peer list` shows")
    p.set_defaults(func=cmd_peer_accept)
    p = psub.add_parser("change", parents=[client_opts, steward_opts],
                        help="propose new limits for a line, or suspend or resume it")
    p.add_argument("line", help="the line id `tally peer list` shows")
    p.add_argument("--limit", metavar="X", help="how far we let them owe us (our unit)")
    p.add_argument("--their-limit", metavar="Y", help="how far they let us owe them (theirs)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--suspend", action="store_true", help="stop new payments across it")
    group.add_argument("--resume", action="store_true", help="allow payments again")
    p.set_defaults(func=cmd_peer_change)
    p = psub.add_parser("list", parents=[client_opts, steward_opts],
                        help="credit lines, their balances and proposals")
    p.set_defaults(func=cmd_peer_list)
    p = psub.add_parser("status", parents=[client_opts, steward_opts],
                        help="reconcile every line now: do both ledgers agree on what "
                        "flowed across it? (exit 1 on a mismatch, or a peer that could "
                        "not be asked)")
    p.set_defaults(func=cmd_peer_status)
    p = psub.add_parser("suspend", parents=[client_opts, steward_opts],
                        help="suspend a line by our stewards alone: no new payments either way")
    p.add_argument("peer", help="the other collective: its name as `tally peer list` shows "
                   "it, or its node key")
    p.set_defaults(func=cmd_peer_suspend)
    p = psub.add_parser("settle", parents=[client_opts, steward_opts],
                        help="record that what is owed on a line was (partly) paid outside "
                        "Tally; their stewards accept it")
    p.add_argument("peer", help="the other collective: its name or node key")
    p.add_argument("amount", help="how much was paid, in our unit (converted at the line's "
                   "rate, rounded down)")
    p.add_argument("--reference", metavar="TEXT",
                   help="a short reference both sides can look up, e.g. a bank reference "
                   "(at most 64 characters; it stays in both logs: no personal data)")
    p.set_defaults(func=cmd_peer_settle)

    p = sub.add_parser("disputes", parents=[client_opts, steward_opts],
                       help="disputes with other collectives and their signed evidence "
                       "(stewards)")
    p.add_argument("--all", action="store_true", help="resolved ones too")
    p.set_defaults(func=cmd_disputes)
    dsub = p.add_subparsers(dest="disputes_command", metavar="ACTION")
    p = dsub.add_parser("resolve", parents=[client_opts, steward_opts],
                        help="mark a dispute resolved, with a note of how")
    p.add_argument("id", help="the dispute id `tally disputes` shows")
    p.add_argument("--note", required=True, help="how it was resolved")
    p.add_argument("--all", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_disputes_resolve)

    p = sub.add_parser("verify", parents=[client_opts],
                       help="check that your transfers are in the node's log and it was "
                       "never rewritten")
    p.add_argument("--as", dest="as_handle", metavar="HANDLE", help=argparse.SUPPRESS)
    p.add_argument("--all", action="store_true",
                   help="re-check every entry of yours, not only those new since last time")
    p.add_argument("--witnesses", type=int, default=0, metavar="K",
                   help="also require at least K valid cosignatures (C2SP tlog-cosignature) "
                   "on the checkpoint from its witnesses: the collectives the node has credit "
                   "lines with, or the keys given with --witness-key")
    p.add_argument("--witness-key", action="append", metavar="VKEY",
                   help="a witness's cosigner key (the `witness_vkey` another node serves at "
                   "/v1/log/checkpoint); repeat for several. Given keys replace the ones the "
                   "node reports, which a dishonest node could make up")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("audit", parents=[client_parent(remembered=False)],
                       help="check a whole log: signatures, tree, tiles, and every balance "
                       "replayed from empty")
    p.add_argument("--dir", metavar="DIR", help="audit a log saved with --save, offline")
    p.add_argument("--save", metavar="DIR", help="also save the log here for offline audits")
    p.add_argument("--vkey", metavar="KEY",
                   help="the log key you trust (name+hash+key); default: the node's")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("peers", parents=[client_opts],
                       help="the nodes this node knows by gossip: freshness, lines, the log "
                       "size seen, and any evidence of equivocation")
    p.set_defaults(func=cmd_peers)
    evidence = sub.add_parser("evidence", help="evidence that a node showed two histories")
    esub = evidence.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    p = esub.add_parser("check", parents=[json_opt],
                        help="verify an evidence file offline (exit status 0 only if it "
                        "proves equivocation)")
    p.add_argument("file", metavar="FILE", help="an evidence record (JSON), e.g. from "
                   "`tally peers --json`")
    p.set_defaults(func=cmd_evidence_check)

    p = sub.add_parser("demo", parents=[json_opt],
                       help="three collectives on this machine, with members paying each other")
    p.add_argument("--serve", action="store_true", help="keep the nodes running until Ctrl-C")
    p.add_argument("--transfers", type=int, default=300, help="how many transfers to run")
    p.add_argument("--port", type=int, default=0,
                   help="first port to use (default: any free ports)")
    p.add_argument("--keep", action="store_true",
                   help="keep the demo's directory (keys, databases, members' homes) "
                   "afterwards; by default it is removed when the demo ends")
    p.set_defaults(func=cmd_demo)
    return parser


def _stdout_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll(2) reports POLLERR on its write
    end then)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(), or no real file descriptor
        return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe is noticed here, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # some other pipe or socket: a bug to see, not to hide
        # Whoever read the output (`tally history --csv | head`) has stopped reading: end
        # quietly, as a command killed by SIGPIPE would, with its status 128 + 13 = 141
        # (Python ignores SIGPIPE, so it arrives as this error). stdout goes to /dev/null so
        # the interpreter's last flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except CliError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        return 1
    except TallyError as exc:
        hint = HINTS.get(exc.code, "").format(url=exc.url or "this node")
        print(f"tally: refused ({exc.code}): {exc.detail}", file=sys.stderr)
        if hint:
            print(f"  {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"tally: configuration: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
