"""Moved to the light client distribution: import from ``model_trainer_client``.

Kept so that code written against ``model_trainer.client`` keeps working; there is one copy.
"""

from model_trainer_client.client import CommandSender, EventWatcher, is_terminal

__all__ = ["CommandSender", "EventWatcher", "is_terminal"]
