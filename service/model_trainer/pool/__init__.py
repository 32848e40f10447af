"""The executor pool: worker processes, their protocol and their kernel-side limits."""
