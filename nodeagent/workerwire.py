"""The wire between the agent and its Python workers: both ends import this.

msgpack over two os pipes, each message one msgpack array.

    agent -> worker   (CMD_RUN, [(seq, kind, target, args, kwargs, env, cwd, attempt_id, max_result), ...])
                      (CMD_CANCEL, seq)   (CMD_STOP,)
    worker -> agent   (EV_READY, pid)  (EV_OK, seq, value, started, ended)
                      (EV_OK_SPOOLED, seq, part file, size, started, ended)
                      (EV_ERROR, seq, error, traceback, started, ended)  (EV_TOO_BIG, the same)
                      (EV_SKIPPED, seq)  (EV_STARTED, seq, started)
                      (EV_PROGRESS, seq, fraction, message)  (EV_OUTPUT, seq, stream, data)

A return value whose encoding is over ``max_result`` is an EV_TOO_BIG; one too
big to ride in a result (``SPOOL_VALUE_BYTES``) is written, encoded, to a
part file in the agent's spool directory (the worker's fifth argument) and
named by EV_OK_SPOOLED: the agent never decodes it, and it never crosses the
pipe. Results come back in the order the tasks were sent. A 16-byte shared memory
cell (``SHM_LAYOUT``) holds the seq of the task running now and its start
time: the agent reads it to enforce timeouts even while a task holds the GIL
in C code, and to blame the right task when a worker dies (a crash loses
unflushed results).
"""

from __future__ import annotations

import struct

# Commands, agent to worker.
CMD_RUN = 1
CMD_CANCEL = 2
CMD_STOP = 3

# Events, worker to agent.
EV_READY = 0
EV_OK = 1
EV_ERROR = 2
EV_SKIPPED = 3  # cancelled or stopped before it started: it never ran (or is a late answer)
EV_STARTED = 4
EV_PROGRESS = 5
EV_OUTPUT = 6
EV_OK_SPOOLED = 7
EV_TOO_BIG = 8  # as EV_ERROR: the return value is over max_result

# Kinds of a batch entry.
CALL = 0  # target is "package.module:function"
PICKLE = 1  # target is a cloudpickled callable

SHM_LAYOUT = struct.Struct("=qd")  # seq of the running task, its start time
SHM_BYTES = SHM_LAYOUT.size

# A call task's value whose encoding is bigger than this is spooled rather
# than sent in its result (a frame then carries many results of this size).
SPOOL_VALUE_BYTES = 1024 * 1024
# The largest event the agent reads whole: a result's value above
# SPOOL_VALUE_BYTES is spooled, so only a huge error text could come near.
MAX_EVENT_BYTES = 16 * 1024 * 1024
READ_BYTES = 1 << 20
