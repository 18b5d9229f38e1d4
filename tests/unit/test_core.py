"""The pure engine core, driven with plain events; invariants after each step."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import core as c
from engine.model import IllegalTransition, Task, TaskStatus
from engine.spec import parse_job_text
from engine.transitions import Why
from nodeagent.protocol import Heartbeat, Hello, RejectCode, TaskResult


def spec(extra: str = "", count: int = 10):
    return parse_job_text(f'name = "t"\nfunction = "math:sqrt"\ncount = {count}\nreduce = "sum"\n{extra}', source="t.toml")


def hello(node_slots: int = 2, holding: list[str] | None = None, labels=None) -> Hello:
    return Hello(version=1, role="agent", id="agent", slots=node_slots, holding=holding or [], labels=labels or {})


def ok(aid: str, value=1) -> TaskResult:
    return TaskResult(id=aid, outcome="ok", value=value)


def fail(aid: str) -> TaskResult:
    return TaskResult(id=aid, outcome="error", error="ValueError: no")


class Harness:
    def __init__(self) -> None:
        self.core = c.EngineCore(rng=random.Random(0))
        self.now = 1000.0
        self.sent: dict[str, list[str]] = {}

    def step(self, event=None) -> c.Effects:
        if event is not None:
            self.core.handle(event)
        out = self.core.collect(self.now)
        for node, specs in out.runs.items():
            self.sent.setdefault(node, []).extend(s.id for s in specs)
        self.core.validate_state()
        return out

    def node(self, name: str, slots: int = 2, **kw) -> c.Effects:
        return self.step(c.NodeUp(name, hello(slots, **kw), self.now))

    def finish(self, node: str, results: list[TaskResult]) -> c.Effects:
        return self.step(c.TasksFinished(node, results, self.now))


def test_job_runs_to_completion_and_reduces():
    h = Harness()
    h.node("a", 2)
    h.step(c.JobSubmitted(1, spec(count=5), h.now))
    while h.core.jobs[1].status.value == "running":
        pending = list(h.core.nodes["a"].running)
        assert pending
        h.finish("a", [ok(aid, 2) for aid in pending])
    assert h.core.jobs[1].reducer.result() == 10
    assert h.core.jobs[1].status.value == "succeeded"


def test_in_flight_is_bounded_by_slots_plus_prefetch():
    h = Harness()
    h.node("a", 2)
    out = h.step(c.JobSubmitted(1, spec(count=1000), h.now))
    # A fresh node has no measured rate yet: slots plus one task per slot.
    assert len(out.runs["a"]) == 4


def test_duplicate_and_late_results_are_counted_once():
    h = Harness()
    h.node("a", 1)
    h.node("b", 1)
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    (node, ids), = h.sent.items()
    first = ids[0]
    h.step(c.NodeLost(node, "test", h.now))  # requeued elsewhere under a new attempt id
    other = "b" if node == "a" else "a"
    second = h.sent[other][0]
    assert second != first
    out = h.finish(node, [ok(first, 5)])  # the late result of the lost attempt
    assert first in out.acks[node]  # acked so the agent forgets it ...
    assert h.core.jobs[1].counts[TaskStatus.SUCCEEDED] == 0  # ... but not counted
    h.finish(other, [ok(second, 7), ok(second, 7)])
    assert h.core.jobs[1].reducer.result() == 7


def test_a_lost_node_back_with_its_attempts_runs_nothing_twice():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=3), h.now))
    held = list(h.sent["a"])
    assert len(held) == 2  # one slot and one prefetched
    h.step(c.NodeLost("a", "no heartbeat", h.now))
    assert h.core.jobs[1].counts[TaskStatus.QUEUED] == 3
    # Only cut off: it still runs one attempt and has the other's result;
    # its hello lists both, and the result follows.
    out = h.step(c.NodeUp("a", hello(1, holding=held), h.now))
    assert not out.cancels.get("a")  # taken back, not cancelled
    assert set(h.core.nodes["a"].running) == set(held)
    out = h.finish("a", [ok(held[0], 5)])
    assert h.core.jobs[1].counts[TaskStatus.SUCCEEDED] == 1
    h.finish("a", [ok(held[1], 6)])
    third = h.sent["a"][-1]
    h.finish("a", [ok(third, 7)])
    assert h.core.jobs[1].reducer.result() == 18
    assert h.sent["a"] == [*held, third]  # nothing sent twice


def test_a_lost_nodes_attempt_and_its_rerun_elsewhere_race_and_the_first_result_wins():
    h = Harness()
    h.node("a", 1)
    h.node("b", 1)
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    (node, (first,)), = h.sent.items()
    other = "b" if node == "a" else "a"
    h.step(c.NodeLost(node, "no heartbeat", h.now))
    (second,) = h.sent[other]
    h.step(c.NodeUp(node, hello(1, holding=[first]), h.now))
    assert not h.core.jobs[1].requeued
    assert set(h.core.attempts) == {first, second}  # running, with both attempts
    out = h.finish(node, [ok(first, 5)])
    assert out.cancels[other] == [second]  # the slower one is stopped
    h.finish(other, [ok(second, 7)])  # too late: not counted
    assert h.core.jobs[1].reducer.result() == 5


def test_failures_retry_with_backoff_then_fail():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec('retries = 1\nbackoff = { base = "1s", cap = "1s" }', count=1), h.now))
    aid = h.sent["a"][-1]
    h.finish("a", [fail(aid)])
    assert h.core.jobs[1].counts[TaskStatus.PENDING] == 1
    h.step(c.Tick(h.now + 0.1))
    assert h.core.jobs[1].counts[TaskStatus.PENDING] == 1  # jittered delay is at least half the base
    h.now += 1.01
    h.step(c.Tick(h.now))
    aid2 = h.sent["a"][-1]
    assert aid2 != aid
    out = h.finish("a", [fail(aid2)])
    assert h.core.jobs[1].status.value == "failed"
    assert out.finished_jobs


def test_missed_heartbeats_mark_node_lost_and_requeue():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    h.now += 5
    out = h.step(c.Tick(h.now))
    assert any(getattr(e, "state", "") == "lost" for e in out.events)
    assert h.core.jobs[1].counts[TaskStatus.QUEUED] == 1


def test_poison_task_fails_after_max_node_failures():
    h = Harness()
    h.step(c.JobSubmitted(1, spec("max_node_failures = 2", count=1), h.now))
    h.node("a", 1)
    h.step(c.NodeLost("a", "died", h.now))  # the first loss counts whatever the node reported
    out = h.node("b", 1)
    (suspect,) = out.runs["b"]
    assert suspect.report_start  # so the next verdict is exact
    h.step(c.TasksStarted("b", [suspect.id], h.now))
    h.step(c.NodeLost("b", "died", h.now))
    assert h.core.jobs[1].counts[TaskStatus.FAILED] == 1


def test_suspect_that_had_not_started_is_not_blamed_for_its_node():
    h = Harness()
    h.step(c.JobSubmitted(1, spec("max_node_failures = 2", count=1), h.now))
    h.node("a", 1)
    h.step(c.NodeLost("a", "died", h.now))
    h.node("b", 1)
    h.step(c.NodeLost("b", "died", h.now))  # its start was never reported: it waited in b's queue
    task = next(iter(h.core.jobs[1].requeued))
    assert task.node_failures == 1
    assert h.core.jobs[1].counts[TaskStatus.QUEUED] == 1


def test_drained_node_gets_no_work_and_requeue_moves_running_tasks():
    h = Harness()
    h.node("a", 2)
    h.step(c.JobSubmitted(1, spec(count=10), h.now))
    out = h.step(c.DrainNode("a", True, "op", h.now))
    assert ("a", True) in out.drains
    assert len(out.cancels["a"]) == 4
    assert "a" not in out.runs
    h.node("b", 2)
    assert len(h.sent["b"]) == 4


def test_node_that_restarted_loses_its_unheld_attempts():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    aid = h.sent["a"][0]
    h.node("a", 1, holding=[])  # reconnect: the agent no longer holds it
    assert h.sent["a"][-1] != aid  # re-sent under a new attempt id


def test_stale_attempts_held_by_a_node_are_cancelled():
    h = Harness()
    out = h.node("a", 1, holding=["9.9.1"])
    assert out.cancels["a"] == ["9.9.1"]


def test_cancel_job_cancels_everything_and_finishes_it():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=100), h.now))
    out = h.step(c.CancelJob(1, "op", h.now))
    assert h.core.jobs[1].status.value == "cancelled"
    assert len(out.cancels["a"]) == 2


def test_illegal_transition_raises():
    h = Harness()
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    task = Task(h.core.jobs[1], 0)
    task.status = TaskStatus.SUCCEEDED
    with pytest.raises(IllegalTransition):
        h.core._move(task, TaskStatus.RUNNING, Why("test", h.now))


def test_a_move_of_many_tasks_is_of_one_job_and_one_status_each_task_once():
    h = Harness()
    h.step(c.JobSubmitted(1, spec(count=4), h.now))
    h.step(c.JobSubmitted(2, spec(count=4), h.now))
    one, two = h.core.jobs[1], h.core.jobs[2]
    done = Task(one, 1)
    done.status = TaskStatus.SUCCEEDED
    for tasks in ([Task(one, 0), done], [Task(one, 0), Task(two, 0)]):
        with pytest.raises(IllegalTransition):
            h.core._move_all(tasks, TaskStatus.CANCELLED, Why("test", h.now))
        assert tasks[0].status is TaskStatus.QUEUED  # an illegal move changes nothing
    twice = Task(one, 2)
    with pytest.raises(IllegalTransition):
        h.core._move_all([twice, twice], TaskStatus.CANCELLED, Why("test", h.now))
    assert twice.status is TaskStatus.QUEUED
    assert one.counts[TaskStatus.QUEUED] == 4 and two.counts[TaskStatus.QUEUED] == 4
    h.core.validate_state()


def test_restore_requeues_in_flight_tasks_with_their_attempt_ids():
    h = Harness()
    rows = [(0, TaskStatus.SUCCEEDED, 1, 0, 0), (2, TaskStatus.PENDING, 1, 1, 0)]
    h.core.restore_job(1, spec(count=5), h.now, rows, [(0, 3.0)])
    h.core.validate_state()
    job = h.core.jobs[1]
    assert job.counts[TaskStatus.SUCCEEDED] == 1 and job.counts[TaskStatus.QUEUED] == 4
    h.node("a", 8)
    # Past every number the tasks may have issued before the crash: the
    # stored one plus a dispatch and its speculative copy.
    assert h.sent["a"][:2] == ["1.1.3", "1.2.4"]


def test_rejected_tasks_are_requeued_without_counting_an_attempt():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    aid = h.sent["a"][0]
    h.step(c.TasksRejected("a", [aid], "node is drained", h.now, RejectCode.DRAINING))
    assert h.core.nodes["a"].drained
    assert h.core.jobs[1].counts[TaskStatus.QUEUED] == 1


def test_heartbeat_updates_load_and_drain_state():
    h = Harness()
    h.node("a", 2)
    out = h.step(c.HeartbeatReceived("a", Heartbeat(time=1.0, cpu=50, mem=10, load=[1, 1, 1], slots_total=2, slots_busy=1, queued=0, drained=True), h.now))
    assert h.core.nodes["a"].drained
    assert any(type(e).__name__ == "NodeLoad" for e in out.events)


def test_a_heartbeat_sent_before_an_undrain_arrived_does_not_drain_the_node_again():
    def beat(drained: bool) -> c.HeartbeatReceived:
        hb = Heartbeat(time=1.0, cpu=5, mem=5, load=[0, 0, 0], slots_total=2, slots_busy=0, queued=0, drained=drained)
        return c.HeartbeatReceived("a", hb, h.now)

    h = Harness()
    h.node("a", 2)
    h.step(c.DrainNode("a", False, "op", h.now))
    h.step(beat(False))  # sent before the drain arrived
    assert h.core.nodes["a"].drained
    h.step(beat(True))
    h.step(c.UndrainNode("a", "op", h.now))
    h.step(beat(True))  # sent before the undrain arrived
    assert not h.core.nodes["a"].drained
    h.step(c.JobSubmitted(1, spec(count=2), h.now))
    assert len(h.sent["a"]) == 2
    h.step(beat(False))
    h.step(beat(True))  # the agent was drained by someone else: believed again
    assert h.core.nodes["a"].drained


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "lose", "tick", "up", "drain", "undrain", "cancel"]), st.integers(0, 2)), max_size=60))
def test_random_event_sequences_keep_invariants_and_count_each_task_once(steps):
    h = Harness()
    names = ["a", "b", "c"]
    h.step(c.JobSubmitted(1, spec("retries = 1\nbackoff = { base = \"1s\", cap = \"1s\" }", count=12), h.now))
    for action, k in steps:
        name = names[k]
        node = h.core.nodes.get(name)
        if action == "up":
            h.node(name, k + 1, holding=list(node.running) if node and node.up else [])
        elif node is None or not node.up:
            continue
        elif action in ("ok", "fail") and node.running:
            aid = next(iter(node.running))
            h.finish(name, [ok(aid) if action == "ok" else fail(aid)])
        elif action == "lose":
            h.step(c.NodeLost(name, "test", h.now))
        elif action == "tick":
            h.now += 1.1
            for other in h.core.nodes.values():
                other.last_seen = h.now
            h.step(c.Tick(h.now))
        elif action == "drain":
            h.step(c.DrainNode(name, bool(k % 2), "op", h.now))
        elif action == "undrain":
            h.step(c.UndrainNode(name, "op", h.now))
        elif action == "cancel" and k == 2:
            h.step(c.CancelJob(1, "op", h.now, [0, 1]))
    job = h.core.jobs[1]
    assert job.reducer.result() == job.counts[TaskStatus.SUCCEEDED]


def test_results_from_before_a_restart_are_adopted_not_rerun():
    h = Harness()
    h.core.restore_job(1, spec(count=3), h.now, [], [])
    # The agent still runs 1.0.1 and has 1.1.1's result in its journal.
    h.node("a", 1, holding=["1.0.1"])
    assert "1.0.1" not in h.sent.get("a", [])
    h.finish("a", [ok("1.1.1", 5), ok("1.0.1", 2)])
    job = h.core.jobs[1]
    assert job.counts[TaskStatus.SUCCEEDED] == 2
    assert job.reducer.result() == 7
    assert "1.0.1" not in h.sent["a"]  # never re-sent: it was adopted


def test_straggler_gets_a_speculative_copy_and_the_first_result_wins():
    h = Harness()
    h.node("a", 1)
    h.node("b", 1)
    h.step(c.JobSubmitted(1, spec("speculative = true", count=8), h.now))
    # Finish everything quickly except one task stuck on "a".
    stuck = None
    while True:
        live = [(n, aid) for n in ("a", "b") for aid in h.core.nodes[n].running]
        if stuck is None:
            stuck = next(aid for n, aid in live if n == "a")
            h.step(c.TasksStarted("a", [stuck], h.now))
        rest = [(n, aid) for n, aid in live if aid != stuck]
        if not rest:
            break
        for n, aid in rest:
            h.finish(n, [TaskResult(id=aid, outcome="ok", value=1, started=h.now, ended=h.now + 0.1)])
    h.now += 5
    for node in h.core.nodes.values():
        node.last_seen = h.now  # heartbeats kept coming
    h.step(c.Tick(h.now))
    spare = h.sent["b"][-1]
    assert spare.rsplit(".", 1)[0] == stuck.rsplit(".", 1)[0] and spare != stuck
    out = h.finish("b", [ok(spare, 1)])
    assert out.cancels["a"] == [stuck]  # the slower copy is stopped
    job = h.core.jobs[1]
    assert job.status.value == "succeeded" and job.reducer.result() == 8
    h.finish("a", [ok(stuck, 1)])  # its late result is not counted again
    assert job.reducer.result() == 8


# --- speculative copies and the faults around them (issue 9, bugs 1-7) ---------------------


def speculated(h: Harness, extra: str = "") -> tuple[str, str]:
    """Two 1-slot nodes, a speculative job of 8 whose task stuck on "a" got a
    copy on "b". Returns (original id, copy id)."""
    h.node("a", 1)
    h.node("b", 1)
    h.step(c.JobSubmitted(1, spec("speculative = true\n" + extra, count=8), h.now))
    stuck = None
    while True:
        live = [(n, aid) for n in ("a", "b") for aid in h.core.nodes[n].running]
        if stuck is None:
            stuck = next(aid for n, aid in live if n == "a")
            h.step(c.TasksStarted("a", [stuck], h.now))
        rest = [(n, aid) for n, aid in live if aid != stuck]
        if not rest:
            break
        for n, aid in rest:
            h.finish(n, [TaskResult(id=aid, outcome="ok", value=1, started=h.now, ended=h.now + 0.1)])
    h.now += 5
    for node in h.core.nodes.values():
        node.last_seen = h.now
    h.step(c.Tick(h.now))
    copy = h.sent["b"][-1]
    assert len(h.core.attempts[stuck].task.live) == 2
    return stuck, copy


def test_losing_either_copys_node_leaves_the_other_running_to_the_end():
    for victim in ("a", "b"):
        h = Harness()
        stuck, copy = speculated(h)
        h.step(c.NodeLost(victim, "died", h.now))
        survivor, aid = ("b", copy) if victim == "a" else ("a", stuck)
        assert h.core.jobs[1].counts[TaskStatus.RUNNING] == 1
        h.finish(survivor, [ok(aid, 1)])
        assert h.core.jobs[1].status.value == "succeeded" and h.core.jobs[1].reducer.result() == 8


def test_cancelling_a_job_cancels_each_copy_on_its_own_node():
    h = Harness()
    stuck, copy = speculated(h)
    out = h.step(c.CancelJob(1, "op", h.now))
    assert out.cancels == {"a": [stuck], "b": [copy]}
    assert h.core.jobs[1].status.value == "cancelled"


def test_drain_with_requeue_on_the_copys_node_cancels_the_copy_only():
    h = Harness()
    stuck, copy = speculated(h)
    out = h.step(c.DrainNode("b", True, "op", h.now))
    assert out.cancels == {"b": [copy]}
    assert list(h.core.nodes["a"].running) == [stuck]
    h.finish("a", [ok(stuck, 1)])
    assert h.core.jobs[1].status.value == "succeeded"


def test_a_failed_copy_leaves_the_other_and_a_retry_gets_a_fresh_id():
    h = Harness()
    stuck, copy = speculated(h, 'retries = 1\nbackoff = { base = "0s", cap = "0s" }\n')
    h.finish("b", [fail(copy)])  # one copy fails: the other runs on
    assert list(h.core.nodes["a"].running) == [stuck]
    h.finish("a", [fail(stuck)])  # both failed: one failure, a retry
    h.step(c.Tick(h.now))
    retry = [aid for n in "ab" for aid in h.core.nodes[n].running]
    assert len(retry) == 1 and retry[0] not in (stuck, copy)
    everything = [aid for ids in h.sent.values() for aid in ids]
    assert len(everything) == len(set(everything))


def test_a_refused_copy_gives_its_slots_back_and_only_that_node_is_excluded():
    h = Harness()
    stuck, copy = speculated(h)
    h.step(c.TasksRejected("b", [copy], "no", h.now, RejectCode.UNSUPPORTED))
    assert not h.core.nodes["b"].running and h.core.nodes["b"].in_flight_slots == 0
    assert h.core.jobs[1].excluded_nodes == {"b"}
    h.node("b", 1)  # back as a new session: admitted again
    assert not h.core.jobs[1].excluded_nodes


def test_transient_refusals_never_exclude_a_node():
    for code in (RejectCode.DRAINING, RejectCode.FULL, RejectCode.SHUTTING_DOWN):
        h = Harness()
        h.node("a", 1)
        h.step(c.JobSubmitted(1, spec(count=1), h.now))
        h.step(c.TasksRejected("a", [h.sent["a"][0]], "text that means nothing", h.now, code))
        job = h.core.jobs[1]
        assert not job.excluded_nodes and job.counts[TaskStatus.FAILED] == 0
        h.node("a", 1)  # back as a new session (undrained): the task goes out again, under a new id
        assert job.counts[TaskStatus.RUNNING] == 1
        assert len(h.sent["a"]) >= 2 and len(set(h.sent["a"])) == len(h.sent["a"])


def test_a_malformed_task_fails_instead_of_excluding_every_node():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=1, extra="retries = 3"), h.now))
    h.step(c.TasksRejected("a", [h.sent["a"][0]], "bad", h.now, RejectCode.BAD_SPEC))
    assert h.core.jobs[1].status.value == "failed" and not h.core.jobs[1].excluded_nodes


def test_attempts_a_stopping_agent_ends_are_requeued_without_a_failure():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec("retries = 0\nmax_node_failures = 1", count=2), h.now))
    first, second = h.sent["a"][:2]
    h.finish("a", [TaskResult(id=first, outcome="stopped", error="agent shutting down"),
                   TaskResult(id=second, outcome="stopped", error="agent shutting down")])
    job = h.core.jobs[1]
    assert job.status.value == "running" and job.counts[TaskStatus.QUEUED] + job.counts[TaskStatus.RUNNING] == 2
    assert all(t.failures == 0 and t.node_failures == 0 for t in [a.task for a in h.core.attempts.values()] + list(job.requeued))


def test_a_console_cancel_reported_by_the_agent_is_final():
    h = Harness()
    h.node("a", 1)
    h.step(c.JobSubmitted(1, spec(count=1), h.now))
    h.finish("a", [TaskResult(id=h.sent["a"][0], outcome="cancelled", error="cancelled")])
    assert h.core.jobs[1].status.value == "cancelled"


def test_after_a_restart_restored_work_waits_for_known_nodes_hellos():
    h = Harness()
    h.core.restore_job(1, spec(count=2), h.now, [(0, TaskStatus.QUEUED, 1, 0, 0)], [])
    h.step(c.AwaitNodes(["a", "b"], h.now))
    h.node("a", 4)
    assert not h.sent.get("a")  # b may still run task 0: wait for its hello
    h.step(c.JobSubmitted(2, spec(count=1), h.now))
    assert h.sent["a"] == ["2.0.1"]  # new work is not held up
    h.node("b", 1, holding=["1.0.2"])  # b still runs it: adopted, not rerun
    assert "1.0.2" in h.core.nodes["b"].running
    assert not [aid for aid in h.sent["a"] if aid.startswith("1.0.")]  # task 0 is not run twice
    assert h.core.jobs[1].counts[TaskStatus.RUNNING] == 2  # task 0 on b, task 1 placed now


def test_a_known_node_that_never_says_hello_holds_restored_work_only_until_the_heartbeat_timeout():
    h = Harness()
    h.core.restore_job(1, spec(count=1), h.now, [], [])
    h.step(c.AwaitNodes(["a", "gone"], h.now))
    h.node("a", 1)
    assert not h.sent.get("a")
    h.now += 3.5
    h.core.nodes["a"].last_seen = h.now
    out = h.step(c.Tick(h.now))
    assert any("gone" in getattr(e, "message", "") for e in out.events)
    assert h.sent["a"] == ["1.0.3"]


def test_counts_tell_prefetched_tasks_from_started_ones():
    h = Harness()
    h.node("a", 2)
    h.step(c.JobSubmitted(1, spec(count=10), h.now))
    job = h.core.jobs[1]
    sent = list(h.core.nodes["a"].running)
    assert len(sent) == 4  # two slots, two prefetched
    assert job.counts_by_label() | {"queued": 0} == {"pending": 0, "queued": 0, "sent": 4, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    h.step(c.TasksStarted("a", sent[:2], h.now))
    h.step(c.TasksStarted("a", sent[:1], h.now))  # a repeated start changes nothing
    counts = job.counts_by_label()
    assert (counts["running"], counts["sent"], counts["queued"]) == (2, 2, 6)
    h.finish("a", [ok(sent[0])])  # one started ends, its place goes to a fresh task
    counts = job.counts_by_label()
    assert (counts["running"], counts["sent"], counts["succeeded"]) == (1, 3, 1)
    h.finish("a", [ok(sent[2])])  # finished before its start was reported: never running
    assert job.counts_by_label()["running"] == 1
    h.step(c.NodeLost("a", "gone", h.now))  # lost: all back to the queue
    counts = job.counts_by_label()
    assert (counts["running"], counts["sent"], counts["queued"]) == (0, 0, 8)
    assert sum(counts.values()) == job.total
