"""The training engine: BaseTrainer, the backend registry, data, tokenizers, checkpoints."""
