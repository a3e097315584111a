"""The actors: a supervisor owning one dispatcher and one actor per API key."""

from maxllm_gate.actors.dispatcher import Dispatcher
from maxllm_gate.actors.job import PRIORITY_LEVELS, Job, JobState
from maxllm_gate.actors.key_actor import KeyActor
from maxllm_gate.actors.supervisor import Supervisor

__all__ = ["PRIORITY_LEVELS", "Dispatcher", "Job", "JobState", "KeyActor", "Supervisor"]
