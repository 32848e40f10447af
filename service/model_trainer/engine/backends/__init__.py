"""Built-in backends; importing this package registers them."""

from . import char_lstm, gpt2

__all__ = ["char_lstm", "gpt2"]
