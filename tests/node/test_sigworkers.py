"""Signature-checking worker processes (``node.service.SigWorkers``, ``node.sigworker``):
right verdicts in order, a worker that dies fails only its own jobs and is replaced, and no
worker outlives its node, even a SIGKILLed one."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import pytest

from crypto.keys import SecretKey
from node.service import SigWorkers, Verifier
from node.sigworker import (
    READY,
    SIGNATURES,
    answer_frame,
    encode_frame,
    encode_signatures,
    open_signed,
)
from protocol.messages import Transfer, sign_message

KEY = SecretKey.from_random(bytes(range(32)))
OTHER = SecretKey.from_random(bytes(range(1, 33)))


def transfers(n: int) -> list:
    return [
        sign_message(Transfer("ab" * 16, f"{i:032x}", "ann", "bo", 1 + i, None, 10**13), KEY)
        for i in range(n)
    ]


def jobs_with_bad(n: int) -> tuple[list[tuple[str, bytes, bytes]], list[bool]]:
    """n jobs; every third is wrong in one of three ways (another key, other bytes, a
    signature that is not the one canonical spelling)."""
    jobs, expected = [], []
    for i, signed in enumerate(transfers(n)):
        sig, pk, body = signed.sigs[0].sig, KEY.public.raw, signed.signed_bytes
        if i % 3 == 1:
            kind = i % 9
            if kind == 1:
                pk = OTHER.public.raw
            elif kind == 4:
                body = body + b" "
            else:
                sig = sig[:-1] + "B"  # unused bits set: not canonical
        jobs.append((sig, pk, body))
        expected.append(i % 3 != 1)
    return jobs, expected


@pytest.fixture
async def one_worker() -> AsyncIterator[SigWorkers]:
    pool = SigWorkers(1)
    yield pool
    await pool.close()


def test_worker_frame_matches_checking_here():
    jobs, expected = jobs_with_bad(30)
    answer = answer_frame(encode_frame([(SIGNATURES, encode_signatures(jobs))])[4:])[4:]
    assert [b == 1 for b in answer] == expected == open_signed(jobs)


def test_truncated_frame_is_refused_not_misread():
    frame = encode_frame([(SIGNATURES, encode_signatures(jobs_with_bad(2)[0]))])[4:]
    with pytest.raises(ValueError):
        answer_frame(frame[:-10])


async def test_workers_answer_in_order_across_many_jobs():
    pool = SigWorkers(2)
    try:
        batches = [jobs_with_bad(n) for n in (1, 5, 40, 3, 200)]
        answers = await asyncio.gather(*(pool.check(jobs) for jobs, _ in batches))
        assert answers == [expected for _, expected in batches]
    finally:
        await pool.close()
    assert pool.workers == [None, None]


async def test_verifier_through_workers_and_on_the_loop_agree():
    items = transfers(100)
    with_workers, on_loop = Verifier(2), Verifier(0)
    try:
        for chunk in (items[:1], items[:7], items):  # coalesced small jobs and a split batch
            assert await with_workers.verify(chunk) == await on_loop.verify(chunk)
            assert all(ok for _, ok in await with_workers.verify(chunk))
    finally:
        await with_workers.close()


async def test_a_dead_worker_fails_its_jobs_and_is_replaced(one_worker: SigWorkers):
    pool = one_worker
    jobs, expected = jobs_with_bad(3)
    assert await pool.check(jobs) == expected
    worker = pool.workers[0]
    assert worker is not None
    proc = worker.proc
    big = jobs_with_bad(3000)[0]  # ~0.3 s of work: the worker dies holding it
    held = asyncio.create_task(pool.check(big))
    while not worker.waiting:
        await asyncio.sleep(0)
    proc.kill()
    with pytest.raises(RuntimeError, match="signature worker stopped"):
        await held
    # At once, before the dead worker's exit status is even known: a new one answers.
    assert await asyncio.wait_for(pool.check(jobs), 30) == expected
    assert pool.workers[0] is not worker


async def test_a_stuck_worker_is_killed_and_its_jobs_fail_instead_of_waiting_for_ever(
    one_worker: SigWorkers,
):
    # Alive but answering nothing (here: stopped, as a debugger or a frozen VM would leave
    # it): without a bound, every request behind it would wait until the node restarts.
    pool = one_worker
    pool.STALL_SECONDS = 0.4
    jobs, expected = jobs_with_bad(3)
    assert await pool.check(jobs) == expected
    worker = pool.workers[0]
    assert worker is not None
    await asyncio.sleep(1.0)  # idle for longer than the bound: owing nothing is not a stall
    assert worker.proc.returncode is None and pool.workers[0] is worker
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RuntimeError, match="signature worker stopped"):
            await asyncio.wait_for(pool.check(jobs), 30)
        await asyncio.wait_for(worker.proc.wait(), 30)  # killed, not left stopped
    finally:
        if worker.proc.returncode is None:
            worker.proc.kill()
    del pool.STALL_SECONDS  # the default again: a busy machine must not fail the next one
    assert await asyncio.wait_for(pool.check(jobs), 30) == expected  # a new worker answers
    assert pool.workers[0] is not worker


async def test_a_worker_that_never_starts_is_killed_and_its_jobs_fail(
    one_worker: SigWorkers, caplog: pytest.LogCaptureFixture,
):
    pool = one_worker
    pool.STALL_SECONDS, pool.STARTUP_SECONDS = 0.4, 0.8
    worker = await pool._worker(0)
    os.kill(worker.proc.pid, signal.SIGSTOP)  # long before Python has started in it
    jobs, expected = jobs_with_bad(3)
    try:
        with pytest.raises(RuntimeError, match="signature worker stopped"):
            await asyncio.wait_for(pool.check(jobs), 30)
    finally:
        if worker.proc.returncode is None:
            worker.proc.kill()
    assert "did not start" in caplog.text
    del pool.STALL_SECONDS, pool.STARTUP_SECONDS  # the defaults: a slow start is no failure
    assert await asyncio.wait_for(pool.check(jobs), 30) == expected  # a new worker answers


def test_workers_exit_when_their_node_is_killed(tmp_path):
    script = textwrap.dedent("""
        import asyncio, sys
        from node.service import SigWorkers
        async def main():
            pool = SigWorkers(2)
            await asyncio.gather(pool.check([]), pool.check([]))
            print(" ".join(str(w.proc.pid) for w in pool.workers), flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    node = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    try:
        pids = [int(p) for p in node.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # running
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
        node.stdout.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                # Reaped by init once it exits; until then a zombie counts as gone.
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ")[1].startswith("Z"):
                        alive.discard(pid)
            except FileNotFoundError:
                alive.discard(pid)
        time.sleep(0.05)
    assert not alive, f"signature workers {alive} outlived their node"


async def test_a_job_that_cannot_be_sent_leaves_later_verdicts_in_place(one_worker: SigWorkers):
    """A frame that cannot be built fails its own job only: the next jobs still get their own
    verdicts (a queued answer for it would hand every later job its neighbour's)."""
    pool = one_worker
    jobs, expected = jobs_with_bad(6)
    assert await pool.check(jobs) == expected
    sig, pk, body = jobs[0]
    with pytest.raises(struct.error):  # a signature too long for its length field
        await pool.check([("A" * 70000, pk, body)])
    forged = [(jobs[1][0], jobs[1][1], jobs[1][2])]  # a signature that does not verify
    assert await pool.check(forged) == [False]
    assert await pool.check(jobs) == expected


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_ctrl_c_or_a_service_stop_reaches_the_workers_but_they_wait_for_the_node(sig):
    # SIGINT: what a Ctrl-C sends the node's process group; SIGTERM: what systemd sends
    # every process of the service. The node still needs its workers while it stops.
    pool = SigWorkers(1)
    try:
        jobs, expected = jobs_with_bad(4)
        assert await pool.check(jobs) == expected
        worker = pool.workers[0]
        assert worker is not None
        proc = worker.proc
        os.kill(proc.pid, sig)
        await asyncio.sleep(0.2)
        assert await pool.check(jobs) == expected
        assert pool.workers[0] is worker and proc.returncode is None
    finally:
        await pool.close()
    assert proc.returncode is not None  # and it ended when its input did


async def test_a_clean_stop_lets_asyncio_see_each_worker_exit_by_itself(caplog):
    # A worker ends when the stopping node closes its input. Killing it once its output
    # ended (it had exited, but asyncio's child watcher had not reported it yet) made
    # ``Popen.poll`` reap it first: asyncio then logged "Unknown child process pid N, will
    # report returncode 255" at most stops, a WARNING an operator saw at each Ctrl-C.
    # Racy by nature, hence several stops.
    jobs, expected = jobs_with_bad(2)
    procs = []
    with caplog.at_level("WARNING", logger="asyncio"):
        for _ in range(8):
            pool = SigWorkers(1)
            try:
                assert await pool.check(jobs) == expected
                worker = pool.workers[0]
                assert worker is not None
                procs.append(worker.proc)
            finally:
                await pool.close()
    assert [proc.returncode for proc in procs] == [0] * len(procs)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_a_worker_that_closes_its_output_but_runs_on_is_killed(
    one_worker: SigWorkers, monkeypatch: pytest.MonkeyPatch,
):
    # The other way an output ends: the worker is still running (here: it closes its
    # output on its first job and sleeps). Its jobs fail at once; the process does not
    # linger past END_SECONDS.
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.stdout.buffer.write({READY!r}); sys.stdout.flush()
        sys.stdin.buffer.read(4)
        os.close(1)
        time.sleep(60)
    """)
    spawn = asyncio.create_subprocess_exec

    async def fake_worker(program, *args, **kwargs):
        assert args == ("-m", "node.sigworker")
        return await spawn(program, "-c", script, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake_worker)
    pool = one_worker
    pool.END_SECONDS = 0.3
    worker = await pool._worker(0)
    with pytest.raises(RuntimeError, match="signature worker stopped"):
        await asyncio.wait_for(pool.check(jobs_with_bad(2)[0]), 30)
    assert await asyncio.wait_for(worker.proc.wait(), 30) == -signal.SIGKILL


async def test_no_job_is_taken_once_closing():
    pool = SigWorkers(1)
    jobs, expected = jobs_with_bad(2)
    assert await pool.check(jobs) == expected
    await pool.close()
    with pytest.raises(RuntimeError, match="stopping"):
        await pool.check(jobs)
    assert pool.workers == [None]


def test_input_that_ends_inside_a_frame_is_refused_not_answered(tmp_path):
    """Input that ends right after a frame's length is an error (the node fails its jobs),
    not an empty frame answered with no verdicts."""
    frame = encode_frame([(SIGNATURES, encode_signatures(jobs_with_bad(3)[0]))])
    proc = subprocess.run([sys.executable, "-m", "node.sigworker"], input=frame[:4],
                          capture_output=True, cwd=os.getcwd(), timeout=60)
    assert proc.returncode != 0 and proc.stdout == READY  # and no answer after it
    assert b"closed inside a frame" in proc.stderr
