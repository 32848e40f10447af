"""The job book and its pure helpers: lifecycle decisions, effects, offsets, fair share."""
