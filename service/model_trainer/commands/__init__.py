"""The ``model-trainer`` commands: serve, run, sample, schema."""
