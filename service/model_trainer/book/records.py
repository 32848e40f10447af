"""Kafka records as plain data: what the service consumes (the contracts' :class:`Record`
and :class:`TP`, the client's too). What it produces is the shell's to encode
(:mod:`model_trainer.shell.wire`): the book decides in facts.

Pure (no aiokafka): the job book decides in these terms, and :mod:`.kafka` converts.
"""

from __future__ import annotations

from model_trainer_contracts.records import TP as TP
from model_trainer_contracts.records import Record as Record
