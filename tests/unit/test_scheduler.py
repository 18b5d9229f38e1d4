from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.runspec import RunSpecs
from engine.scheduler import JobDemand, NodeRoom, place
from engine.spec import JobSpec
from nodeagent.protocol import TaskSpec


def _given(placements, job_id=None):
    out: dict[str, int] = {}
    for p in placements:
        if job_id is None or p.job_id == job_id:
            out[p.node_id] = out.get(p.node_id, 0) + p.count
    return out


def test_least_loaded_node_is_served_first():
    nodes = [NodeRoom("a", 4, 3), NodeRoom("b", 4, 0)]
    assert _given(place([JobDemand(1, 0, 1)], nodes)) == {"b": 1}


def test_heterogeneous_nodes_fill_in_proportion_to_capacity():
    nodes = [NodeRoom("small", 2, 0), NodeRoom("big", 8, 0)]
    assert _given(place([JobDemand(1, 0, 5)], nodes)) == {"small": 1, "big": 4}


def test_drained_or_full_nodes_get_nothing_and_labels_are_honoured():
    nodes = [NodeRoom("gpu", 2, 0, {"gpu": "yes"}), NodeRoom("cpu", 2, 0)]
    assert _given(place([JobDemand(1, 0, 10, labels={"gpu": "yes"})], nodes)) == {"gpu": 2}
    assert place([JobDemand(1, 0, 10)], [NodeRoom("full", 2, 2)]) == []


def test_higher_priority_job_is_placed_first():
    nodes = [NodeRoom("a", 2, 0)]
    placements = place([JobDemand(1, 0, 5), JobDemand(2, 10, 5)], nodes)
    assert _given(placements, 2) == {"a": 2}
    assert _given(placements, 1) == {}


def test_multi_slot_tasks_need_room_for_all_their_slots():
    nodes = [NodeRoom("a", 3, 0), NodeRoom("b", 4, 0)]
    assert _given(place([JobDemand(1, 0, 10, slots_per_task=2)], nodes)) == {"a": 1, "b": 2}


def test_excluded_nodes_are_skipped():
    nodes = [NodeRoom("a", 2, 0), NodeRoom("b", 2, 0)]
    assert _given(place([JobDemand(1, 0, 4, excluded=frozenset({"a"}))], nodes)) == {"b": 2}


def test_a_task_goes_only_to_nodes_that_run_its_kind():
    nodes = [NodeRoom("shell-only", 4, 0, kinds=frozenset({"shell"})), NodeRoom("python", 4, 0, kinds=frozenset({"shell", "call"}))]
    assert _given(place([JobDemand(1, 0, 10, kind="call")], nodes)) == {"python": 4}
    assert _given(place([JobDemand(1, 0, 2, kind="shell")], nodes)) == {"shell-only": 1, "python": 1}
    assert place([JobDemand(1, 0, 10, kind="pickle")], nodes) == []
    # A node whose hello named no kinds (an older agent) is offered any.
    assert _given(place([JobDemand(1, 0, 1, kind="pickle")], [NodeRoom("old", 4, 0)])) == {"old": 1}


@given(
    st.lists(st.tuples(st.integers(1, 16), st.integers(0, 16)), min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(-2, 2), st.integers(0, 50), st.integers(1, 3)), min_size=1, max_size=4),
)
def test_placement_never_exceeds_capacity_or_demand(node_specs, job_specs):
    nodes = [NodeRoom(f"n{i}", cap, min(used, cap)) for i, (cap, used) in enumerate(node_specs)]
    jobs = [JobDemand(i, prio, ready, slots) for i, (prio, ready, slots) in enumerate(job_specs)]
    placements = place(jobs, nodes)
    used = {n.node_id: n.in_flight for n in nodes}
    per_job: dict[int, int] = {}
    for p in placements:
        assert p.count > 0
        used[p.node_id] += p.count * jobs[p.job_id].slots_per_task
        per_job[p.job_id] = per_job.get(p.job_id, 0) + p.count
    for n in nodes:
        assert used[n.node_id] <= max(n.capacity, n.in_flight)
    for job in jobs:
        assert per_job.get(job.job_id, 0) <= job.ready
    # Work conservation: if a job still has tasks, no node has room for one.
    for job in jobs:
        if per_job.get(job.job_id, 0) < job.ready:
            assert all(n.capacity - used[n.node_id] < job.slots_per_task for n in nodes)


# --- each attempt's run message (engine.runspec) ----------------------------------------

RUN_SPEC_JOBS = [
    JobSpec(name="call", kind="call", items=range(5), fn="math:pow", args=(2,), kwargs={"k": 1}, env={"A": "b"}, cwd="/tmp",
            timeout=3.0, slots=2, max_result=1024),
    JobSpec(name="call-plain", kind="call", items=["x", {"y": 1}, [2]], fn="json:dumps"),
    JobSpec(name="pickle", kind="pickle", items=range(3), payload=b"\x80\x04N.", args=(1, 2)),
    JobSpec(name="argv", kind="shell", items=["a b", "c;d", "e"], argv_template=("echo", "{item}", "{index}", "fixed")),
    JobSpec(name="script", kind="shell", items=["a b", "$(x)", "e/f.txt"], argv_template=("sh", "-c", "cat {item} > {stem}.out")),
    JobSpec(name="shell", kind="shell", items=["a b", "it's", "e/f.txt"], shell_template="echo {item} {name} {index}", env={"X": "1"}),
    JobSpec(name="shell-fixed", kind="shell", items=range(2), shell_template="true"),
]


@pytest.mark.parametrize("spec", RUN_SPEC_JOBS, ids=lambda s: s.name)
@pytest.mark.parametrize("report_start", [False, True])
def test_run_specs_equal_the_task_specs_built_field_by_field(spec: JobSpec, report_start: bool) -> None:
    runs = RunSpecs(spec)
    for index in range(spec.task_count()):
        aid = f"7.{index}.3"
        expected = TaskSpec(aid, spec.kind, report_start=report_start, **spec.task_fields(index))
        made = runs.make(aid, index, report_start)
        assert made == expected and made.to_wire() == expected.to_wire()
        assert type(made) is TaskSpec and TaskSpec.from_wire(made.to_wire()) == expected
        with pytest.raises(FrozenInstanceError):  # a TaskSpec like any other: frozen
            made.id = "changed"  # type: ignore[misc]
    if spec.kind != "shell":
        # Each attempt gets its own args list (the item is in it), never one shared list.
        assert runs.make("7.0.1", 0, False).args is not runs.make("7.0.2", 0, False).args
