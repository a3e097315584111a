"""The actors: a supervisor owning one dispatcher and one actor per API key.

The protocol, as it stands. Messages are still plain method calls made
within one event loop (none of them yields), not memory object streams;
each is named for the actor that receives it:

**Dispatcher** (:class:`Dispatcher`) receives

- ``submit(job)`` from a caller: queue it, or raise at once
  (:exc:`ShutdownError`, :exc:`QueueFullError`, :exc:`NoKeyAvailableError`,
  :exc:`RequestTooLargeError`); ``await submit_when_room(job)`` waits for
  room instead of raising :exc:`QueueFullError` (backpressure).
- ``requeue(job, delay)`` from a key actor: a 429, a retryable error, a call
  whose bookkeeping failed before it was sent, or (from the supervisor) a
  call cut off by a crash. The job keeps its place in line.
- ``key_changed(actor, model)`` from a key actor, when a call ends: the key's
  place in the routing heap is recomputed.
- ``notify()`` from anyone: capacity may have come back (a refund, a key
  added, enabled or freed); the dispatcher looks again.

**Key actor** (:class:`KeyActor`) receives ``start_call(job, now)`` from the
dispatcher, after the dispatcher reserved the job's charge through
``try_admit``. It answers each job exactly once: ``job.finish(result)`` or
``job.fail(error)`` (the caller's reply), or hands it back with ``requeue``.
A bug in one call's bookkeeping settles that call alone.

**Supervisor** (:class:`Supervisor`) receives ``add(actor)``,
``remove(key_id)`` and ``shutdown(timeout)``, restarts a crashed actor
(``restart_base`` doubling up to ``restart_max``) and re-queues its cut-off
calls.

Not yet the design card's shape (issue #16): the dispatcher itself reserves
on a key's buckets (``try_admit`` runs in the dispatcher's task, against the
shared state backend), and strategies read each key's live state rather than
a snapshot the key publishes.
"""

from maxllm_gate.actors.dispatcher import Dispatcher
from maxllm_gate.actors.job import PRIORITY_LEVELS, Job, JobState
from maxllm_gate.actors.key_actor import KeyActor
from maxllm_gate.actors.supervisor import Supervisor

__all__ = ["PRIORITY_LEVELS", "Dispatcher", "Job", "JobState", "KeyActor", "Supervisor"]
