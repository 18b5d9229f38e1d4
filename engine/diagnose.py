"""Why a job is not running, in words an operator can act on.

The engine never waits in silence: these read the node views any client has
(``NodeInfo``) and say which node cannot be reached and why, or which field
of a job no node offers. Pure functions, shared by ``shoal run`` and the API.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.spec import JobSpec
from engine.views import NodeInfo
from nodeagent.protocol import KIND_CALL, KIND_PICKLE, KIND_SHELL

REACHED = frozenset({"up", "draining", "drained"})


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def unmet_field(spec: JobSpec, nodes: Sequence[NodeInfo]) -> tuple[str, str] | None:
    """``(field, sentence)`` when no reached node can take the job's tasks
    (its ``labels``, ``slots`` or kind of task), else None. With no node
    reached: None."""
    reached = [n for n in nodes if n.state in REACHED]
    if not reached:
        return None
    fits_labels = [n for n in reached if all(n.labels.get(k) == v for k, v in spec.labels.items())]
    if not fits_labels:
        offered = ", ".join(f"{n.id} {_labels(n.labels)}" for n in reached[:8])
        more = f", {len(reached) - 8} more" if len(reached) > 8 else ""
        return "labels", f"no node offers labels {_labels(spec.labels)} ({len(reached)} nodes: {offered}{more})"
    fits_slots = [n for n in fits_labels if n.slots >= spec.slots]
    if not fits_slots:
        offered = ", ".join(f"{n.id} {n.slots} slots" for n in fits_labels[:8])
        return "slots", f"no node offers {spec.slots} slots per task ({len(fits_labels)} nodes: {offered})"
    if not any(not n.kinds or spec.kind in n.kinds for n in fits_slots):
        offered = ", ".join(f"{n.id} {'/'.join(n.kinds)}" for n in fits_slots[:8])
        field = "command" if spec.kind == KIND_SHELL else "function"
        return field, f"no node runs {spec.kind} tasks ({len(fits_slots)} nodes: {offered}){_KIND_HINTS.get(spec.kind, '')}"
    return None


# What makes an agent offer a kind of task it does not offer now.
_KIND_HINTS = {
    KIND_PICKLE: "; an agent runs pickled callables only when started with --allow-pickle",
    KIND_CALL: "; an agent runs Python tasks when its task user can run its Python (its log says why not)",
}


def all_known_reached(nodes: Sequence[NodeInfo]) -> bool:
    """Every node we know of is up: none that is still coming could change an answer."""
    return bool(nodes) and all(n.state in REACHED for n in nodes)


def unreachable(nodes: Sequence[NodeInfo]) -> str:
    """One clause per node not reached: ``addr: reason``, joined by '; '."""
    return "; ".join(f"{n.id}: {_why(n)}" for n in nodes if n.state not in REACHED)


def _why(node: NodeInfo) -> str:
    if node.state == "refused":
        return "refused, its host key changed (see above)"
    if node.state == "untrusted":
        return f"untrusted: shoal trust {node.id}"
    return node.detail or node.state


def no_node_reached(nodes: Sequence[NodeInfo], waited: float) -> str:
    """The sentence for giving up: no node was ever reached."""
    if not nodes:
        return f"no node to run on after {waited:.0f} s: give --node HOST:PORT or --mdns-interface IP"
    return f"no node reached in {waited:.0f} s: {unreachable(nodes)}"


def why_waiting(spec: JobSpec | None, nodes: Sequence[NodeInfo]) -> str:
    """Why a job may not be moving, or "": for a timeout's message."""
    if not any(n.state in REACHED for n in nodes):
        return f"no node reached: {unreachable(nodes)}" if nodes else "no node known: give nodes or mdns_interfaces"
    unmet = unmet_field(spec, nodes) if spec is not None else None
    return f"field '{unmet[0]}': {unmet[1]}" if unmet else ""
