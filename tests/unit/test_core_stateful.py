"""The pure engine core against a model of its agents, driven by hypothesis.

Every input the core takes is a rule: submit, node up (same agent, restarted
agent), node lost (connection cut, agent killed, agent stopped by SIGTERM),
heartbeats (or their absence), started, finished with every outcome, every
reject code, drain and undrain with and without requeue, cancel of a job or
of some tasks, resubmit of failed and cancelled tasks, of chosen ended tasks
(succeeded ones too) and of a whole ended job, ticks that end
backoffs and grow stragglers into speculative copies. The agents are modelled
as the protocol describes them: they hold what they were sent, report a
cancelled attempt as ``cancelled``, keep results until acked and send them
again after a reconnect, report what they held as ``lost`` after a restart
and as ``stopped`` when stopped gracefully.

After every step ``validate_state`` holds and no attempt id was ever sent
twice. At the end the nodes come up and the agents finish everything: every
job ends and every task's outcome is recorded exactly once (the oracle is
the store the rows would go to, and the job's reducer).

Profiles: a fast one by default (CI); ``SHOAL_HYPOTHESIS_PROFILE=long`` runs
5,000 examples.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import core as c
from engine.inputs import ResubmitRow, TaskRow
from engine.model import TERMINAL, JobStatus, TaskStatus
from engine.spec import JobSpec, parse_job_text
from nodeagent.protocol import Heartbeat, Hello, Outcome, RejectCode, TaskResult

NODES = ("a", "b", "c")
FAILED_OUTCOMES = (Outcome.ERROR, Outcome.TIMEOUT, Outcome.CRASHED, Outcome.TOO_BIG, "some-new-outcome")
REJECT_CODES = (*RejectCode, "", "some-new-code")

PROFILES = {
    "ci": settings(max_examples=300, stateful_step_count=40, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    "long": settings(max_examples=5_000, stateful_step_count=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
}
PROFILE = PROFILES[os.environ.get("SHOAL_HYPOTHESIS_PROFILE", "ci")]


@dataclass
class Agent:
    """One node's agent as the protocol describes it."""

    slots: int
    connected: bool = False
    drained: bool = False
    held: dict[str, bool] = field(default_factory=dict)  # attempt id -> started
    unacked: dict[str, TaskResult] = field(default_factory=dict)  # results sent or waiting to be


def result(aid: str, outcome: str, now: float, error: str = "") -> TaskResult:
    return TaskResult(id=aid, outcome=outcome, value=1 if outcome == Outcome.OK else None,
                      error=error, started=now - 0.1, ended=now)


class CoreMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16), nodes=st.sampled_from([(), ("a",), ("a", "b"), ("a", "b", "c")]))
    def setup(self, seed: int, nodes: tuple[str, ...]) -> None:
        config = c.CoreConfig(speculate_after=0.5, speculate_min_peers=1, heartbeat_timeout=3.0)
        self.core = c.EngineCore(config, random.Random(seed))
        self.now = 1000.0
        self.agents: dict[str, Agent] = {}
        self.sent: set[str] = set()  # every attempt id ever sent, to any node
        self.rows: dict[tuple[int, int], TaskRow] = {}  # the store: (job, index) -> latest row
        self.rerun: set[tuple[int, int]] = set()  # succeeded tasks resubmitted, whose row goes back to queued
        self.specs: dict[int, JobSpec] = {}
        self.next_job = 1
        self.restarts = 0
        for k, name in enumerate(nodes):
            self.node_up(name, 2 - k % 2, restarted=False)

    # --- carrying out effects, as the coordinator would ----------------------------

    def flush(self) -> None:
        out = self.core.collect(self.now)
        for row in out.task_rows:
            key = (row.job_id, row.task_index)
            before = self.rows.get(key)
            if before is not None:
                rerun = before.status == TaskStatus.SUCCEEDED and key in self.rerun
                assert before.status != TaskStatus.SUCCEEDED or rerun, f"task {key} recorded again after it succeeded: {row}"
                if rerun:
                    assert row.status == TaskStatus.QUEUED, f"task {key}: rerun, but stored as {row.status}"
                    self.rerun.discard(key)
                assert row.attempts >= before.attempts, f"task {key}: stored attempt number went back"
            self.rows[key] = row
        for node, specs in out.runs.items():
            agent = self.agents[node]
            assert agent.connected, f"runs sent to {node}, which is not connected"
            for spec in specs:
                assert spec.id not in self.sent, f"attempt id {spec.id} sent twice"
                self.sent.add(spec.id)
                agent.held[spec.id] = False
        for node, ids in out.cancels.items():
            agent = self.agents.get(node)
            if agent is None:
                continue
            for aid in ids:
                if agent.connected and aid in agent.held:
                    del agent.held[aid]
                    agent.unacked[aid] = result(aid, Outcome.CANCELLED, self.now, "cancelled")
        for node, ids in out.acks.items():
            for aid in ids:
                self.agents[node].unacked.pop(aid, None)
        for order in out.drains:
            agent = self.agents[order.node]
            if agent.connected:
                agent.drained = order.drained
        for node in out.disconnects:
            self.agents[node].connected = False

    def step(self, event: object) -> None:
        self.core.handle(event)
        self.flush()

    @invariant()
    def valid(self) -> None:
        if hasattr(self, "core"):
            self.core.validate_state()

    @invariant()
    def each_success_counted_once(self) -> None:
        """Every job's count and reduced result (a sum of ones) equal its
        succeeded rows in the store: a rerun success replaces the old one."""
        if not hasattr(self, "core"):
            return
        succeeded: dict[int, int] = {}
        for (job_id, _), row in self.rows.items():
            if row.status == TaskStatus.SUCCEEDED:
                succeeded[job_id] = succeeded.get(job_id, 0) + 1
        for job in self.core.jobs.values():
            stored = succeeded.get(job.id, 0)
            assert job.counts[TaskStatus.SUCCEEDED] == stored, f"job {job.id}: {job.counts[TaskStatus.SUCCEEDED]} succeeded, {stored} stored"
            assert (job.reducer.result() or 0) == stored, f"job {job.id}: reduced {job.reducer.result()}, {stored} succeeded"

    # --- jobs --------------------------------------------------------------------

    @precondition(lambda self: self.next_job <= 4)
    @rule(count=st.integers(0, 6), retries=st.integers(0, 1), speculative=st.booleans(), poison=st.integers(1, 3))
    def submit(self, count: int, retries: int, speculative: bool, poison: int) -> None:
        text = (f'name = "j"\nfunction = "math:sqrt"\ncount = {count}\nreduce = "sum"\nretries = {retries}\n'
                f'backoff = {{ base = "1s", cap = "1s" }}\nspeculative = {str(speculative).lower()}\n'
                f"max_node_failures = {poison}\n")
        spec = self.specs[self.next_job] = parse_job_text(text, source="j.toml")
        self.step(c.JobSubmitted(self.next_job, spec, self.now))
        self.next_job += 1

    @precondition(lambda self: self.restarts < 3)
    @rule()
    def engine_restart(self) -> None:
        """The engine dies (kill -9) and comes back from the store; the
        agents stay up, with what they hold and their unacked results."""
        self.restarts += 1
        old = self.core
        self.core = c.EngineCore(old.config, random.Random(self.restarts))
        for job_id, job in sorted(old.jobs.items()):
            if job.status is not JobStatus.RUNNING:
                continue  # its end was stored
            rows = [(r.task_index, TaskStatus(r.status), r.attempts, r.failures, r.node_failures)
                    for (j, _), r in sorted(self.rows.items()) if j == job_id]
            values = [(r.task_index, r.value) for (j, _), r in sorted(self.rows.items())
                      if j == job_id and r.status == TaskStatus.SUCCEEDED]
            self.core.restore_job(job_id, self.specs[job_id], job.submitted_at, rows, values)
        for agent in self.agents.values():
            agent.connected = False
        self.core.handle(c.AwaitNodes(sorted(self.agents), self.now))
        self.flush()

    @precondition(lambda self: self.core.jobs)
    @rule(data=st.data(), whole=st.booleans())
    def cancel(self, data: st.DataObject, whole: bool) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.core.jobs)))
        total = self.core.jobs[job_id].total
        indices = None if whole or not total else data.draw(st.lists(st.integers(0, total - 1), max_size=3))
        self.step(c.CancelJob(job_id, "op", self.now, indices))

    @precondition(lambda self: self.core.jobs)
    @rule(data=st.data(), which=st.sampled_from(["failed", "chosen", "chosen", "whole"]))
    def resubmit(self, data: st.DataObject, which: str) -> None:
        """As the coordinator does it: the failed and cancelled tasks, or
        chosen ended tasks whatever their outcome (the operator's "rerun this
        task"), or every task of an ended job. A succeeded task's value
        leaves the reducer, which is rebuilt from the other stored values."""
        job_id = data.draw(st.sampled_from(sorted(self.core.jobs)))
        if which == "whole" and self.core.jobs[job_id].status is JobStatus.RUNNING:
            return  # refused: cancel it first
        ended = [row for (j, _), row in sorted(self.rows.items()) if j == job_id and row.status in TERMINAL]
        if which == "failed":
            ended = [row for row in ended if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)]
        elif which == "chosen" and ended:
            wanted = set(data.draw(st.lists(st.sampled_from([row.task_index for row in ended]), min_size=1, max_size=3)))
            ended = [row for row in ended if row.task_index in wanted]
        again = {row.task_index for row in ended}
        reduce_from = None
        if any(row.status == TaskStatus.SUCCEEDED for row in ended):
            reduce_from = [(row.task_index, row.value) for (j, _), row in sorted(self.rows.items())
                           if j == job_id and row.status == TaskStatus.SUCCEEDED and row.task_index not in again]
            self.rerun.update((job_id, i) for i in again)
        rows = [ResubmitRow(row.task_index, TaskStatus(row.status), row.attempts) for row in ended]
        self.step(c.ResubmitTasks(job_id, rows, "op", self.now, reduce_from))

    # --- nodes -------------------------------------------------------------------

    @rule(name=st.sampled_from(NODES), slots=st.integers(1, 3), restarted=st.booleans())
    def node_up(self, name: str, slots: int, restarted: bool) -> None:
        agent = self.agents.get(name)
        if agent is None or restarted:
            old = agent
            agent = self.agents[name] = Agent(slots, drained=bool(old and old.drained))
            if old is not None:
                # The journal survives a restart: what ran is lost, results stay.
                agent.unacked = dict(old.unacked)
                for aid in old.held:
                    agent.unacked[aid] = result(aid, Outcome.LOST, self.now, "agent restarted")
        agent.connected = True
        # Its hello lists what it runs and what it has unacked results for (they follow).
        holding = [*agent.held, *(aid for aid in agent.unacked if aid not in agent.held)]
        hello = Hello(version=1, role="agent", id=name, slots=agent.slots, holding=holding, drained=agent.drained)
        self.core.handle(c.NodeUp(name, hello, self.now))
        # Unacked results follow the hello, in the same write.
        if agent.unacked:
            self.core.handle(c.TasksFinished(name, list(agent.unacked.values()), self.now))
        self.flush()

    @rule(name=st.sampled_from(NODES), how=st.sampled_from(["cut", "killed", "stopped"]))
    def node_lost(self, name: str, how: str) -> None:
        agent = self.agents.get(name)
        if agent is None:
            return
        if how == "stopped" and agent.connected:
            # SIGTERM: whatever it held ends as stopped, reported before it goes.
            stopped = [result(aid, Outcome.STOPPED, self.now, "agent shutting down") for aid in agent.held]
            agent.held.clear()
            for r in stopped:
                agent.unacked[r.id] = r
            if stopped:
                self.core.handle(c.TasksFinished(name, stopped, self.now))
        if how == "killed":
            for aid in agent.held:
                agent.unacked[aid] = result(aid, Outcome.LOST, self.now, "agent restarted")
            agent.held.clear()
        agent.connected = False
        self.step(c.NodeLost(name, how, self.now))

    @rule(name=st.sampled_from(NODES))
    def heartbeat(self, name: str) -> None:
        agent = self.agents.get(name)
        if agent is None or not agent.connected:
            return
        hb = Heartbeat(time=self.now, cpu=1, mem=1, load=[0, 0, 0], slots_total=agent.slots,
                       slots_busy=0, queued=0, drained=agent.drained)
        self.step(c.HeartbeatReceived(name, hb, self.now))

    @rule(name=st.sampled_from(NODES), requeue=st.booleans())
    def drain(self, name: str, requeue: bool) -> None:
        self.step(c.DrainNode(name, requeue, "op", self.now))

    @rule(name=st.sampled_from(NODES))
    def undrain(self, name: str) -> None:
        self.step(c.UndrainNode(name, "op", self.now))

    @rule(dt=st.sampled_from([0.5, 1.1, 3.5]), silent=st.sampled_from([None, *NODES]))
    def tick(self, dt: float, silent: str | None) -> None:
        """Time passes; every connected agent but ``silent`` heartbeats."""
        self.now += dt
        for name, agent in self.agents.items():
            node = self.core.nodes.get(name)
            if agent.connected and name != silent and node is not None and node.up:
                node.last_seen = self.now
        self.step(c.Tick(self.now))

    # --- agent reports -------------------------------------------------------------

    def _held(self) -> list[tuple[str, str]]:
        return [(name, aid) for name, agent in sorted(self.agents.items()) if agent.connected for aid in agent.held]

    @precondition(lambda self: self._held())
    @rule(data=st.data())
    def started(self, data: st.DataObject) -> None:
        name, aid = data.draw(st.sampled_from(self._held()))
        self.agents[name].held[aid] = True
        self.step(c.TasksStarted(name, [aid], self.now))

    @precondition(lambda self: self._held())
    @rule(data=st.data(), outcome=st.sampled_from([Outcome.OK, Outcome.OK, *FAILED_OUTCOMES, Outcome.CANCELLED]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        name, aid = data.draw(st.sampled_from(self._held()))
        agent = self.agents[name]
        del agent.held[aid]
        r = result(aid, outcome, self.now, "" if outcome == Outcome.OK else "boom")
        agent.unacked[aid] = r
        attempt = self.core.attempts.get(aid)
        sole = attempt is not None and attempt.node.id == name and attempt.task.live == [attempt]
        self.step(c.TasksFinished(name, [r], self.now))
        if outcome == Outcome.TOO_BIG and sole:
            # Never retried, whatever the job's retries: a rerun makes the same value.
            assert attempt is not None and attempt.task.status == TaskStatus.FAILED

    def _speculative_pairs(self) -> list[tuple[str, str, str, str]]:
        """(node, attempt, node, attempt) of two held attempts of one speculative job."""
        held = [(name, aid) for name, aid in self._held()
                if (job := self.core.jobs.get(int(aid.split(".")[0]))) is not None and job.spec.speculative]
        return [(n1, a1, n2, a2) for n1, a1 in held for n2, a2 in held
                if a1 != a2 and a1.split(".")[0] == a2.split(".")[0] and a1.split(".")[1] != a2.split(".")[1]]

    @precondition(lambda self: self._speculative_pairs())
    @rule(data=st.data(), dt=st.sampled_from([0.5, 3.5]))
    def straggle(self, data: st.DataObject, dt: float) -> None:
        """One task finishes quickly, another of its job runs on and on: the
        way to a speculative copy (which the next tick may make)."""
        _, _, n2, slow = data.draw(st.sampled_from(self._speculative_pairs()))
        self.agents[n2].held[slow] = True
        self.step(c.TasksStarted(n2, [slow], self.now))
        job = slow.split(".")[0] + "."
        for name, aid in self._held():
            if aid.startswith(job) and aid != slow and aid in self.agents[name].held and data.draw(st.booleans()):
                del self.agents[name].held[aid]
                r = result(aid, Outcome.OK, self.now)
                self.agents[name].unacked[aid] = r
                self.step(c.TasksFinished(name, [r], self.now))
        spare = next((n for n in NODES if n not in self.agents or not self.agents[n].connected), None)
        if spare is not None and data.draw(st.booleans()):
            self.node_up(spare, 2, restarted=False)  # an idle node for the copy
        self.tick(dt, None)

    @rule(name=st.sampled_from(NODES))
    def deliver_again(self, name: str) -> None:
        """Results not acked yet arrive again (a resend after a reconnect)."""
        agent = self.agents.get(name)
        if agent is not None and agent.connected and agent.unacked:
            self.step(c.TasksFinished(name, list(agent.unacked.values()), self.now))

    @precondition(lambda self: self._held())
    @rule(data=st.data(), code=st.sampled_from(REJECT_CODES))
    def reject(self, data: st.DataObject, code: str) -> None:
        name, aid = data.draw(st.sampled_from(self._held()))
        if self.agents[name].held[aid]:
            return  # only an attempt that never started can be refused
        del self.agents[name].held[aid]
        self.step(c.TasksRejected(name, [aid], f"refused ({code})", self.now, code))

    # --- the end: nodes up, every job ends, every outcome recorded once ------------------

    def teardown(self) -> None:
        if not hasattr(self, "core"):
            return
        for name in NODES:
            agent = self.agents.get(name)
            if agent is not None and agent.connected:
                agent.connected = False
                self.step(c.NodeLost(name, "reconnect", self.now))
            self.node_up(name, 2, restarted=False)
            self.undrain(name)
        for _ in range(300):
            if all(job.status is not JobStatus.RUNNING for job in self.core.jobs.values()):
                break
            self.tick(60.0, None)
            for name, agent in self.agents.items():
                for aid in list(agent.held):
                    del agent.held[aid]
                    r = result(aid, Outcome.OK, self.now)
                    agent.unacked[aid] = r
                    self.step(c.TasksFinished(name, [r], self.now))
            self.core.validate_state()
        for job_id, spec in self.specs.items():
            ended = {i: r.status for (j, i), r in self.rows.items() if j == job_id and r.status in (3, 4, 5)}
            assert len(ended) == spec.task_count(), f"job {job_id}: {len(ended)} of {spec.task_count()} tasks recorded as ended"
            job = self.core.jobs.get(job_id)
            if job is None:
                continue  # it ended before an engine restart
            assert job.status is not JobStatus.RUNNING, f"job {job.id} never ended: {job.counts_by_label()}"
            succeeded = sum(1 for s in ended.values() if s == TaskStatus.SUCCEEDED)
            assert job.counts[TaskStatus.SUCCEEDED] == succeeded
            assert (job.reducer.result() or 0) == succeeded, f"job {job.id}: reduced {job.reducer.result()}, {succeeded} succeeded"


CoreMachine.TestCase.settings = PROFILE
TestCoreStateful = CoreMachine.TestCase
