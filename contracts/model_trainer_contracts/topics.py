"""Default topic names. Every message is keyed by ``job_id`` so a job's commands and events
stay ordered on one partition. The service lets each name be overridden."""

COMMANDS_TOPIC = "trainer.jobs"
EVENTS_TOPIC = "trainer.metrics"
DEAD_LETTER_TOPIC = "trainer.jobs.dlq"
LOGS_TOPIC = "trainer.jobs.logs"  # a job's log lines (LogLineV1), best-effort

# Dead letters: the refused command's bytes and key unchanged, these headers added (UTF-8).
DLQ_ERROR_CODE_HEADER = "error_code"
DLQ_ERROR_MESSAGE_HEADER = "error_message"
DLQ_ORIGINAL_TOPIC_HEADER = "original_topic"
DLQ_ORIGINAL_PARTITION_HEADER = "original_partition"
DLQ_ORIGINAL_OFFSET_HEADER = "original_offset"
