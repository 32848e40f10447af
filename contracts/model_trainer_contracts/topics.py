"""Default topic names. Every message is keyed by ``job_id`` so a job's commands and events
stay ordered on one partition. The service lets each name be overridden."""

COMMANDS_TOPIC = "trainer.jobs"
EVENTS_TOPIC = "trainer.metrics"
DEAD_LETTER_TOPIC = "trainer.jobs.dlq"
