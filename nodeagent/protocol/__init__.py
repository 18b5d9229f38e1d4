"""The wire contract the agent owns: messages, framing, the SSH algorithm
policy and mDNS names. A leaf package: it imports msgpack and the standard
library only, and nothing else of Shoal. The language-neutral spec is
``nodeagent/PROTOCOL.md``."""

from __future__ import annotations

from nodeagent.protocol.framing import (
    FrameDecoder as FrameDecoder,
)
from nodeagent.protocol.framing import (
    decode as decode,
)
from nodeagent.protocol.framing import (
    decode_body as decode_body,
)
from nodeagent.protocol.framing import (
    encode as encode,
)
from nodeagent.protocol.framing import (
    encode_many as encode_many,
)
from nodeagent.protocol.framing import (
    unpack as unpack,
)
from nodeagent.protocol.mdns import (
    MDNS_SERVICE_TYPE as MDNS_SERVICE_TYPE,
)
from nodeagent.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES as DEFAULT_MAX_FRAME_BYTES,
)
from nodeagent.protocol.messages import (
    DEFAULT_MAX_RESULT as DEFAULT_MAX_RESULT,
)
from nodeagent.protocol.messages import (
    ERR_FRAME_TOO_LARGE as ERR_FRAME_TOO_LARGE,
)
from nodeagent.protocol.messages import (
    ERR_PROTOCOL as ERR_PROTOCOL,
)
from nodeagent.protocol.messages import (
    ERR_STATE as ERR_STATE,
)
from nodeagent.protocol.messages import (
    ERR_VERSION as ERR_VERSION,
)
from nodeagent.protocol.messages import (
    KIND_CALL as KIND_CALL,
)
from nodeagent.protocol.messages import (
    KIND_PICKLE as KIND_PICKLE,
)
from nodeagent.protocol.messages import (
    KIND_SHELL as KIND_SHELL,
)
from nodeagent.protocol.messages import (
    MAX_RESULT_LIMIT as MAX_RESULT_LIMIT,
)
from nodeagent.protocol.messages import (
    MAX_VALUE_CHUNK_BYTES as MAX_VALUE_CHUNK_BYTES,
)
from nodeagent.protocol.messages import (
    MESSAGE_TYPES as MESSAGE_TYPES,
)
from nodeagent.protocol.messages import (
    OUTCOME_CANCELLED as OUTCOME_CANCELLED,
)
from nodeagent.protocol.messages import (
    OUTCOME_CRASHED as OUTCOME_CRASHED,
)
from nodeagent.protocol.messages import (
    OUTCOME_ERROR as OUTCOME_ERROR,
)
from nodeagent.protocol.messages import (
    OUTCOME_LOST as OUTCOME_LOST,
)
from nodeagent.protocol.messages import (
    OUTCOME_OK as OUTCOME_OK,
)
from nodeagent.protocol.messages import (
    OUTCOME_STOPPED as OUTCOME_STOPPED,
)
from nodeagent.protocol.messages import (
    OUTCOME_TIMEOUT as OUTCOME_TIMEOUT,
)
from nodeagent.protocol.messages import (
    OUTCOME_TOO_BIG as OUTCOME_TOO_BIG,
)
from nodeagent.protocol.messages import (
    OUTCOMES as OUTCOMES,
)
from nodeagent.protocol.messages import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
)
from nodeagent.protocol.messages import (
    SHELL_PROGRESS_PREFIX as SHELL_PROGRESS_PREFIX,
)
from nodeagent.protocol.messages import (
    TASK_KINDS as TASK_KINDS,
)
from nodeagent.protocol.messages import (
    VALUE_CHUNK_BYTES as VALUE_CHUNK_BYTES,
)
from nodeagent.protocol.messages import (
    Ack as Ack,
)
from nodeagent.protocol.messages import (
    Cancel as Cancel,
)
from nodeagent.protocol.messages import (
    Drain as Drain,
)
from nodeagent.protocol.messages import (
    Error as Error,
)
from nodeagent.protocol.messages import (
    Finished as Finished,
)
from nodeagent.protocol.messages import (
    Heartbeat as Heartbeat,
)
from nodeagent.protocol.messages import (
    Hello as Hello,
)
from nodeagent.protocol.messages import (
    Message as Message,
)
from nodeagent.protocol.messages import (
    Outcome as Outcome,
)
from nodeagent.protocol.messages import (
    Output as Output,
)
from nodeagent.protocol.messages import (
    Progress as Progress,
)
from nodeagent.protocol.messages import (
    ProtocolError as ProtocolError,
)
from nodeagent.protocol.messages import (
    RejectCode as RejectCode,
)
from nodeagent.protocol.messages import (
    Rejected as Rejected,
)
from nodeagent.protocol.messages import (
    Run as Run,
)
from nodeagent.protocol.messages import (
    Started as Started,
)
from nodeagent.protocol.messages import (
    TaskResult as TaskResult,
)
from nodeagent.protocol.messages import (
    TaskSpec as TaskSpec,
)
from nodeagent.protocol.messages import (
    Undrain as Undrain,
)
from nodeagent.protocol.messages import (
    Value as Value,
)
from nodeagent.protocol.ssh import (
    SSH_CIPHERS as SSH_CIPHERS,
)
from nodeagent.protocol.ssh import (
    SSH_COMPAT_KEX_ALGS as SSH_COMPAT_KEX_ALGS,
)
from nodeagent.protocol.ssh import (
    SSH_HOST_KEY_ALGS as SSH_HOST_KEY_ALGS,
)
from nodeagent.protocol.ssh import (
    SSH_KEX_ALGS as SSH_KEX_ALGS,
)
from nodeagent.protocol.ssh import (
    SSH_MACS as SSH_MACS,
)
from nodeagent.protocol.ssh import (
    SUBSYSTEM as SUBSYSTEM,
)
from nodeagent.protocol.ssh import (
    skip_cbc_countermeasure as skip_cbc_countermeasure,
)
