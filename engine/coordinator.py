"""The engine's I/O shell around the pure core.

It owns the SSH links to agents, the SQLite store, the clock and the event
bus. Frames from agents become core events as they arrive; a flush, scheduled
once per event-loop turn, carries out the core's effects in a fixed order:

1. persist (one transaction): task outcomes, audit entries, finished jobs;
2. send ``run``/``cancel``/``drain`` frames, one write per node;
3. send ``ack`` for the results just committed (never before the commit, so
   an agent forgets a result only once it is safe on our disk);
4. publish events to the UIs.

If the state dir refuses the commit (disk full), steps 2, 3 and a job's end
wait with the batch until it is on disk (engine/writeback.py); links stay
up, events other than a job's end go out, and the UIs are told why.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from engine import core as c
from engine import events as ev
from engine import inputs, live
from engine.link import AgentLink, HostKeyMismatch, LinkClosed, LinkError, UnknownHostKey, open_link
from engine.model import TERMINAL, TaskStatus
from engine.paths import private_file
from engine.spec import JobSpec
from engine.store import Store, StoreUnavailable
from engine.trust import KnownHosts, TrustError, fingerprint
from engine.views import NodeInfo
from engine.writeback import Batch, WriteBack
from nodeagent.protocol import (
    Ack,
    Cancel,
    Drain,
    Error,
    Finished,
    Heartbeat,
    Message,
    Output,
    Progress,
    Rejected,
    Run,
    Started,
    Undrain,
)

log = logging.getLogger("shoal.engine")

TICK_SECONDS = 0.1
ACK_BATCH = 4096  # send acks at once past this many
RECONNECT_MIN = 0.5
RECONNECT_MAX = 30.0


@dataclass
class Peer:
    """Connection state of one agent address."""

    address: str
    host: str
    port: int
    link: AgentLink | None = None
    task: asyncio.Task[None] | None = None
    state: str = "connecting"  # connecting, up, lost, untrusted, refused
    detail: str = ""
    presented_key: asyncssh.SSHKey | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Found over mDNS only: a hint, not trust. Not remembered as a known node
    # and never pinned by --trust-new until its key is trusted (pinned).
    hint: bool = False


class Coordinator:
    def __init__(
        self,
        store: Store,
        known_hosts: KnownHosts,
        client_key: asyncssh.SSHKey,
        *,
        trust_new: bool = False,
        config: c.CoreConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.known_hosts = known_hosts
        self.client_key = client_key
        self.trust_new = trust_new
        self.console_id = store.console_id()
        self.writes = WriteBack(store)  # flushes on their way to disk, held while it refuses them
        self._said_blocked = False
        self.core = c.EngineCore(config, rng)
        self.bus = ev.EventBus()
        self.live = live.LiveState()  # read-side extras for the API: output tails, load history
        self.peers: dict[str, Peer] = {}
        self._flush_scheduled = False
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._unacked: dict[str, list[str]] = {}  # committed results not yet acked
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._handlers: dict[type, Any] = {
            Finished: self._on_finished,
            Started: lambda node, m, now: inputs.TasksStarted(node, m.ids, now),
            Heartbeat: lambda node, m, now: inputs.HeartbeatReceived(node, m, now),
            Rejected: lambda node, m, now: inputs.TasksRejected(node, m.ids, m.reason, now, m.code),
            Progress: lambda node, m, now: inputs.ProgressReported(node, m, now),
            Output: lambda node, m, now: inputs.OutputReceived(node, m, now),
            Error: self._on_error,
        }

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Reload unfinished jobs, reconnect to every node we knew, and tick."""
        for job_id, spec, submitted_at in self.store.unfinished_jobs():
            self.core.restore_job(
                job_id, spec, submitted_at, self.store.task_states(job_id), self.store.succeeded_values(job_id)
            )
        known = self.store.known_nodes()
        self.core.handle(inputs.AwaitNodes(list(known), time.time()))
        for address in known:
            self.add_node(address)
        self._ticker = asyncio.create_task(self._tick_loop())
        self._schedule_flush()

    async def close(self) -> None:
        self._closing = True
        if self._ticker:
            self._ticker.cancel()
        self._flush()
        self._carry_out_all(self.writes.retry(force=True))
        if self.writes.held:
            # Not acked, so the agents keep these in their journals: the next
            # engine on this state dir collects them when it reconnects.
            log.warning(
                "%s; %d results not saved: the agents keep them, and the next engine on %s collects them",
                self.writes.refused, self.writes.held_results(), self.store.path.parent,
            )
        for node in list(self._unacked):
            self._send(node, [Ack(self._unacked.pop(node))])
        for peer in self.peers.values():
            if peer.task:
                peer.task.cancel()
            if peer.link:
                peer.link.close()
        for peer in self.peers.values():
            if peer.task:
                try:
                    await asyncio.wait_for(asyncio.shield(peer.task), 2)
                except (TimeoutError, asyncio.CancelledError, Exception):
                    pass
        self._flush()
        self.bus.close()

    # --- nodes ------------------------------------------------------------------

    def add_node(self, address: str, hint: bool = False) -> None:
        """Use the agent at ``address``; ``hint``: it was only seen over mDNS."""
        known = self.peers.get(address)
        if known is not None:
            if known.hint and not hint:  # now named by the operator too
                known.hint = False
                if known.link is not None:
                    self.writes.remember_node(address)
                    self._say_blocked()
            return
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        peer = Peer(address, host, int(port), hint=hint)
        self.peers[address] = peer
        # Remembered (redialed by later engines) only once reached and
        # trusted (see _connect): a mistyped address does not stay forever.
        peer.task = asyncio.create_task(self._peer_loop(peer))

    def forget_hint(self, address: str) -> None:
        """An mDNS-only node stopped advertising: stop dialing it."""
        peer = self.peers.get(address)
        if peer is not None and peer.hint and peer.link is None and peer.task is not None:
            peer.task.cancel()
            del self.peers[address]

    def trust(self, address: str, replace: bool = False, actor: str = "operator") -> str:
        """Pin the key the node presented (operator action)."""
        peer = self.peers.get(address)
        if peer is None or peer.presented_key is None:
            raise KeyError(f"no key seen from {address} yet")
        self.known_hosts.pin(peer.host, peer.port, peer.presented_key, replace=replace)
        self._record(inputs.AuditEntry(time.time(), actor, "trust", address, fingerprint(peer.presented_key)))
        peer.wake.set()
        return fingerprint(peer.presented_key)

    async def _peer_loop(self, peer: Peer) -> None:
        delay = RECONNECT_MIN
        while not self._closing:
            try:
                link = await self._connect(peer)
            except (UnknownHostKey, HostKeyMismatch, TrustError) as exc:
                await self._wait_for_trust(peer, exc)
                continue
            except (TimeoutError, LinkError, OSError, asyncssh.Error) as exc:
                # Exponential backoff with jitter (half to all of the delay),
                # so many consoles redialing one agent do not arrive in step.
                pause = delay * (0.5 + random.random() / 2)
                reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                self._set_peer(peer, "connecting", f"{reason}, retrying in {pause:.0f} s" if pause >= 1 else f"{reason}, retrying")
                await asyncio.sleep(pause)
                delay = min(RECONNECT_MAX, delay * 2)
                continue
            delay = RECONNECT_MIN
            await self._serve(peer, link)

    async def _connect(self, peer: Peer) -> AgentLink:
        pinned = self.known_hosts.lookup(peer.host, peer.port)
        try:
            link = await open_link(
                peer.host,
                peer.port,
                client_key=self.client_key,
                console_id=self.console_id,
                pinned_host_key=pinned,
                accept_unknown=self.trust_new and pinned is None and not peer.hint,
            )
        except UnknownHostKey as exc:
            peer.presented_key = exc.key
            raise
        except HostKeyMismatch as exc:
            peer.presented_key = exc.key
            raise
        if pinned is None:
            # First trust, asked for with --trust-new: pin it like ssh would.
            self.known_hosts.pin(peer.host, peer.port, link.host_key)
            self._record(inputs.AuditEntry(time.time(), "engine", "trust-new", peer.address, fingerprint(link.host_key)))
        # Reached and its key is pinned: trusted now, so a known node.
        peer.hint = False
        self.writes.remember_node(peer.address)
        self._say_blocked()
        return link

    async def _wait_for_trust(self, peer: Peer, exc: Exception) -> None:
        if isinstance(exc, (HostKeyMismatch, TrustError)):
            self._set_peer(peer, "refused", str(exc))
            self._publish([ev.Alert("error", f"host key of {peer.address} CHANGED, refused: {exc}", peer.address)])
        else:
            fp = fingerprint(peer.presented_key) if peer.presented_key else "?"
            self._set_peer(peer, "untrusted", f"new host key {fp}; trust it with: shoal trust {peer.address}")
        peer.wake.clear()
        await peer.wake.wait()

    async def _serve(self, peer: Peer, link: AgentLink) -> None:
        assert link.hello is not None  # open_link returns only after the agent's hello
        peer.link = link
        peer.state, peer.detail = "up", ""
        self.core.handle(inputs.NodeUp(peer.address, link.hello, time.time()))
        self._schedule_flush()
        reason = "connection closed"
        try:
            while True:
                try:
                    batch = await link.recv_many()
                except LinkClosed:
                    reason = link.close_reason or reason
                    break
                now = time.time()
                for message in batch:
                    handler = self._handlers.get(type(message))
                    if handler is None:
                        raise LinkError(f"unexpected {message.TYPE} frame")
                    event = handler(peer.address, message, now)
                    if event is not None:
                        self.core.handle(event)
                # Flush now rather than on the next loop turn: one hop less
                # between a result arriving and its waiter waking.
                self._flush()
        except (LinkError, OSError, asyncssh.Error) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            peer.link = None
            link.close()
            if not self._closing:
                self.core.handle(inputs.NodeLost(peer.address, reason, time.time()))
                peer.state, peer.detail = "lost", reason
                self._schedule_flush()

    def _on_finished(self, node: str, message: Finished, now: float) -> inputs.TasksFinished:
        return inputs.TasksFinished(node, message.results, now)

    def _on_error(self, node: str, message: Error, now: float) -> None:
        self._publish([ev.Alert("error", f"{node}: agent error {message.code}: {message.message}", node)])

    def _set_peer(self, peer: Peer, state: str, detail: str) -> None:
        peer.state, peer.detail = state, detail
        self._publish([ev.NodeChanged(peer.address, state, detail=detail)])

    # --- jobs -------------------------------------------------------------------

    def submit(self, spec: JobSpec, actor: str = "operator") -> int:
        """Persist, then accept: the id is returned only after the commit."""
        now = time.time()
        job_id = self.store.add_job(spec, now, actor)
        self.core.handle(inputs.JobSubmitted(job_id, spec, now))
        # Dispatch now rather than a loop turn later: the submit is committed
        # already, and a burst of submits costs a flush each either way.
        self._flush()
        return job_id

    def operate(self, event: Any) -> None:
        self.core.handle(event)
        self._schedule_flush()

    def resubmit(
        self, job_id: int, failed_only: bool = True, actor: str = "operator", indices: Collection[int] | None = None
    ) -> int:
        """Ended tasks back to the queue: the failed and cancelled ones (of
        ``indices`` only, if given); with ``failed_only=False`` those of
        ``indices`` whatever their outcome, or with no indices the whole job
        (once it ended). A task keeps its attempt numbers, so it runs again
        under fresh attempt ids (agents never take an id twice), before or
        after an engine restart; a succeeded one's value leaves the job's
        result until its new one arrives. Returns how many were queued."""
        spec = self.store.job_spec(job_id)
        if spec is None:
            raise KeyError(f"no job {job_id}")
        self.settle()  # outcomes decided so far are in the store the rows come from
        self._carry_out_all(self.writes.retry(force=True))
        refused = self.writes.refused
        if refused is not None:  # some outcomes are held, not in the store the rows come from
            raise StoreUnavailable(refused.state_dir, refused.what, refused.detail)
        job = self.core.jobs.get(job_id)
        if not failed_only and indices is None and job is not None and job.status.value == "running":
            raise ValueError(f"job {job_id} is still running; cancel it first or resubmit --failed")
        if job is None:
            self.core.restore_job(job_id, spec, time.time(), self.store.task_states(job_id), self.store.succeeded_values(job_id))
        statuses = [TaskStatus.FAILED, TaskStatus.CANCELLED] if failed_only else list(TERMINAL)
        rows = [inputs.ResubmitRow(*row) for row in self.store.rows_with_status(job_id, statuses)]
        if indices is not None:
            wanted = set(indices)
            rows = [row for row in rows if row.task_index in wanted]
        again = {row.task_index for row in rows}
        reduce_from = None
        if any(row.status is TaskStatus.SUCCEEDED for row in rows):
            reduce_from = [(i, value) for i, value in self.store.succeeded_values(job_id) if i not in again]
        # Their rows say queued from now on (a terminal row means ended), and
        # the job's says running, so a restarted engine runs them.
        self.store.requeue_finished(job_id, sorted(again))
        self.operate(inputs.ResubmitTasks(job_id, rows, actor, time.time(), reduce_from))
        return len(rows)

    # --- the flush --------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def settle(self) -> None:
        """Carry out what the core decided so far, now: a query right after
        an operator action sees its outcome in the store."""
        if self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        now = time.time()
        out = self.core.collect(now)
        if not out:
            return
        self.live.observe(out.task_rows, out.events, now)
        jobs = [
            (j.id, j.status.value, j.finished_at, j.reducer.result(), j.counts_by_label())
            for j in out.finished_jobs
        ]
        targets = {*out.runs, *out.cancels, *(node for node, _ in out.drains)}
        batch = Batch(out, jobs, {node: self.peers[node].link for node in targets if node in self.peers})
        self._persist(batch)

    def _record(self, entry: inputs.AuditEntry) -> None:
        """An audit entry of the I/O shell's own (trust), stored in order with the flushes."""
        self._persist(Batch(inputs.Effects(audit=[entry])))

    def _persist(self, batch: Batch) -> None:
        if self.writes.refused is not None and not _waits_for_disk(batch):
            self._hold(batch)  # while blocked: a heartbeat's news is not held
            return
        done = self.writes.persist(batch)
        if not done:
            self._hold(batch)
        self._say_blocked()
        self._carry_out_all(done)

    def _hold(self, batch: Batch) -> None:
        """What of a held batch need not wait for the disk goes now: events
        (a job's end waits: its waiters are told it is stored) and the
        closing of links to nodes declared lost."""
        out = batch.effects
        ended = [e for e in out.events if type(e) is ev.JobFinished]
        self._publish([e for e in out.events if type(e) is not ev.JobFinished])
        out.events = ended
        for node in out.disconnects:
            peer = self.peers.get(node)
            if peer is not None and peer.link is not None:
                peer.link.close()
        out.disconnects = []

    def _say_blocked(self) -> None:
        """Tell the UIs, once, when writes start being held and when they go through again."""
        blocked = self.writes.refused is not None
        if blocked == self._said_blocked:
            return
        self._said_blocked = blocked
        if blocked:
            line = self.writes.blocked
        else:
            line = f"state dir {self.store.path.parent} takes writes again: the held results are stored, carrying on"
        log.info("%s", line)
        self._publish([ev.Alert("error" if blocked else "info", line)])

    def _carry_out_all(self, batches: list[Batch]) -> None:
        for batch in batches:
            self._carry_out(batch)

    def _carry_out(self, batch: Batch) -> None:
        """Everything that waits for the batch's commit: frames, acks, a job's end."""
        out = batch.effects
        # Acks ride along with the next frames to that node (one SSH packet,
        # not two), or go on the next tick; a late ack only means the agent
        # keeps a result in its journal a little longer.
        for node, ids in out.acks.items():
            self._unacked.setdefault(node, []).extend(ids)
        sends: dict[str, list[Message]] = {}
        for node, specs in out.runs.items():
            sends.setdefault(node, []).append(Run(specs))
        for node, ids in out.cancels.items():
            sends.setdefault(node, []).append(Cancel(ids))
        for node, drained in out.drains:
            sends.setdefault(node, []).append(Drain() if drained else Undrain())
        for node, ids in list(self._unacked.items()):
            if node in sends or len(ids) >= ACK_BATCH:
                sends.setdefault(node, []).append(Ack(self._unacked.pop(node)))
        for node, messages in sends.items():
            peer = self.peers.get(node)
            if node in batch.links and (peer is None or peer.link is not batch.links[node]):
                # Held past a reconnect: the core ended those attempts with
                # the old link, so its acks only go to the new one.
                messages = [m for m in messages if isinstance(m, Ack)]
            if messages:
                self._send(node, messages)
        for node in out.disconnects:
            peer = self.peers.get(node)
            if peer is not None and peer.link is not None:
                peer.link.close()
        self._publish(out.events)
        for job in out.finished_jobs:
            for waiter in self._waiters.pop(job.id, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_job(self, job_id: int) -> None:
        """Return once the job has ended (its outcome is committed by then)."""
        job = self.core.jobs.get(job_id)
        if job is None or job.status.value != "running":
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(waiter)
        await waiter

    def _send(self, node: str, messages: list[Message]) -> None:
        peer = self.peers.get(node)
        if peer is None or peer.link is None:
            return  # the node is gone; its tasks were requeued by NodeLost
        try:
            peer.link.send_many(messages)
        except (LinkError, OSError, asyncssh.Error) as exc:
            log.debug("send to %s failed: %s", node, exc)

    def _publish(self, events: list[Any]) -> None:
        if events:
            for i, event in enumerate(events):
                if type(event) is ev.NodeChanged and event.node in self.peers:
                    events[i] = live.node_changed(event, self.node_info(event.node))
            self.bus.publish(events)

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            mono = time.monotonic()
            self.core.update_rates(mono - last)
            last = mono
            self.core.handle(inputs.Tick(time.time()))
            self._schedule_flush()
            if self.writes.refused is not None:
                done = self.writes.retry()
                self._say_blocked()
                self._carry_out_all(done)
            for node in list(self._unacked):
                self._send(node, [Ack(self._unacked.pop(node))])

    # --- snapshots for UIs ------------------------------------------------------

    def node_info(self, address: str) -> NodeInfo:
        peer = self.peers[address]
        key = peer.link.host_key if peer.link is not None else peer.presented_key
        return live.node_info(
            address, peer.state, peer.detail, fingerprint(key) if key else "", self.core.nodes.get(address), self.live, time.time()
        )

    def node_infos(self) -> list[NodeInfo]:
        return [self.node_info(address) for address in self.peers]

    def job_result(self, job_id: int) -> Any:
        job = self.core.jobs.get(job_id)
        return job.reducer.result() if job else self.store.job_result(job_id)


def _waits_for_disk(batch: Batch) -> bool:
    """Whether the batch holds anything to store or anything that must
    follow the batches held before it (frames, acks, a job's end)."""
    out = batch.effects
    return bool(out.task_rows or out.audit or batch.jobs or out.acks or out.runs or out.cancels or out.drains or out.finished_jobs)


def engine_lock(state_dir: Path) -> Any:
    """One engine per state dir: an exclusive, non-blocking flock."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = open(private_file(state_dir / "engine.lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(f"another shoal engine is using {state_dir} (see the lock file {state_dir / 'engine.lock'})") from None
    return handle
