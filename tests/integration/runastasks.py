"""Call tasks for the --run-as tests in test_agent_security.py, imported by real workers."""

from __future__ import annotations

import os


def identity(_item: object) -> list[object]:
    """Who the worker runs as, its HOME, who owns its directory, and what it holds open."""
    links = []
    for name in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass  # the listing's own descriptor, closed since
    return [os.getuid(), os.getgid(), os.getgroups(), os.environ["HOME"], os.stat(".").st_uid, links]


def big(size: int) -> str:
    """A value too big to ride in its result: the worker spools it to a file."""
    return "v" * size


def forged_part(target: str, size: int, how: str) -> None:
    """A task that lies to its agent: it writes on its worker's results pipe
    that its value waits in a part file that is ``target`` (a file of
    root's), named as it is (``how`` "path") or through a link in the
    worker's own directory (``how`` "link"), then ends the worker before
    the true result can follow."""
    import gc
    import time

    import msgpack

    from nodeagent.workerwire import EV_OK_SPOOLED

    loop = next(o for o in gc.get_objects() if type(o).__name__ == "_WorkerLoop")
    seq = loop._current
    claimed = target
    if how == "link":
        claimed = os.path.join(os.getcwd(), f"w{os.getpid()}-{seq}.part")
        os.symlink(target, claimed)
    now = time.time()
    os.write(loop._res_fd, msgpack.packb((EV_OK_SPOOLED, seq, claimed, size, now, now), use_bin_type=True))
    os._exit(0)


def write_agent_log(line: str) -> str:
    """Writes ``line`` on every way out of its worker to a log: the worker's
    own stderr (kept for its failures) and descriptor 2."""
    import nodeagent.worker

    nodeagent.worker._agent_stderr.write(line)
    nodeagent.worker._agent_stderr.flush()
    os.write(2, line.encode())
    return "written"
