"""model-trainer's light client: commands out, events and job state in, from Kafka alone."""

from .board import JobBoard, JobView
from .client import CommandSender, EventWatcher, is_terminal
from .decode import QueuedNotice, Update, decode_state, decode_update
from .readers import JobFollower, LiveTail, read_job_state, read_states
from .settings import ClientSettings, KafkaConnection, client_kwargs

__all__ = [
    "ClientSettings",
    "CommandSender",
    "EventWatcher",
    "JobBoard",
    "JobFollower",
    "JobView",
    "KafkaConnection",
    "LiveTail",
    "QueuedNotice",
    "Update",
    "client_kwargs",
    "decode_state",
    "decode_update",
    "is_terminal",
    "read_job_state",
    "read_states",
]
