"""The async shell around the book: Kafka in and out, the state topic, the sweep, probes."""
