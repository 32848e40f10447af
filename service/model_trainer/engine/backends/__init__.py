"""Built-in backends, one module each; :mod:`model_trainer.engine.registry` lists them."""
