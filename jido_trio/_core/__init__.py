"""The local kernel: agent cells, their mailboxes, reply slots, batch loop,
durable mailbox and state store, and delivery to an agent of this node.

Imports nothing above it (not the Communication layer, the node, signals or
work queues): a cell persists through the engines in its :class:`Kernel` and
reports what happens to it through :class:`CellEvents`.
"""

from __future__ import annotations

from ._batch import BATCH_LIMIT as BATCH_LIMIT
from ._batch import action_error as action_error
from ._cell import RESTART_KEY as RESTART_KEY
from ._cell import AgentCell as AgentCell
from ._cell import InjectedCrash as InjectedCrash
from ._cell import state_decoder as state_decoder
from ._delivery import Delivery as Delivery
from ._kernel import CellEvents as CellEvents
from ._kernel import Kernel as Kernel
from ._log import dead_letter_stream as dead_letter_stream
from ._log import mailbox_stream as mailbox_stream
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxClosed as MailboxClosed
from ._reply import Reply as Reply
from ._reply import ReplyDeadlines as ReplyDeadlines
from ._store import CHUNK_SIZE as CHUNK_SIZE
from ._store import AgentStore as AgentStore
from ._store import encode_state as encode_state
from ._store import state_key as state_key
