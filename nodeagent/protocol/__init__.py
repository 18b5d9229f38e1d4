"""The wire contract the agent owns: messages, framing, the SSH algorithm
policy and mDNS names. A leaf package: it imports msgpack and the standard
library only, and nothing else of Shoal. The language-neutral spec is
``nodeagent/PROTOCOL.md``."""

from __future__ import annotations

from nodeagent.protocol.messages import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    DEFAULT_MAX_FRAME_BYTES as DEFAULT_MAX_FRAME_BYTES,
    KIND_SHELL as KIND_SHELL,
    KIND_CALL as KIND_CALL,
    KIND_PICKLE as KIND_PICKLE,
    TASK_KINDS as TASK_KINDS,
    OUTCOME_OK as OUTCOME_OK,
    OUTCOME_ERROR as OUTCOME_ERROR,
    OUTCOME_TIMEOUT as OUTCOME_TIMEOUT,
    OUTCOME_CANCELLED as OUTCOME_CANCELLED,
    OUTCOME_CRASHED as OUTCOME_CRASHED,
    OUTCOME_LOST as OUTCOME_LOST,
    OUTCOME_STOPPED as OUTCOME_STOPPED,
    Outcome as Outcome,
    RejectCode as RejectCode,
    OUTCOMES as OUTCOMES,
    ERR_PROTOCOL as ERR_PROTOCOL,
    ERR_VERSION as ERR_VERSION,
    ERR_FRAME_TOO_LARGE as ERR_FRAME_TOO_LARGE,
    ERR_STATE as ERR_STATE,
    SHELL_PROGRESS_PREFIX as SHELL_PROGRESS_PREFIX,
    ProtocolError as ProtocolError,
    Message as Message,
    MESSAGE_TYPES as MESSAGE_TYPES,
    Hello as Hello,
    TaskSpec as TaskSpec,
    Run as Run,
    Cancel as Cancel,
    Ack as Ack,
    Started as Started,
    Drain as Drain,
    Undrain as Undrain,
    Rejected as Rejected,
    Progress as Progress,
    Output as Output,
    TaskResult as TaskResult,
    Finished as Finished,
    Heartbeat as Heartbeat,
    Error as Error,
)
from nodeagent.protocol.framing import (
    encode as encode,
    encode_many as encode_many,
    decode_body as decode_body,
    decode as decode,
    FrameDecoder as FrameDecoder,
)
from nodeagent.protocol.ssh import (
    SUBSYSTEM as SUBSYSTEM,
    SSH_KEX_ALGS as SSH_KEX_ALGS,
    SSH_COMPAT_KEX_ALGS as SSH_COMPAT_KEX_ALGS,
    SSH_HOST_KEY_ALGS as SSH_HOST_KEY_ALGS,
    SSH_CIPHERS as SSH_CIPHERS,
    SSH_MACS as SSH_MACS,
    skip_cbc_countermeasure as skip_cbc_countermeasure,
)
from nodeagent.protocol.mdns import (
    MDNS_SERVICE_TYPE as MDNS_SERVICE_TYPE,
)
