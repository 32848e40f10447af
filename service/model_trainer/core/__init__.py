"""Torch-free facts shared by the runtime (the service) and the engine (workers).

Nothing here imports torch, aiokafka or any module of this package outside ``core``:
the service decides with these at acceptance, and the engine relies on the same ones.
"""
