"""The ledger: the hash-chained audit record of every decision, its signed checkpoints,
its JSON-lines mirror, and the checks that prove nobody rewrote it.

``chain`` is pure (what links records); ``audit`` writes records through the store's
unit of work; ``mirror`` keeps the shippable JSON lines in step with the chain;
``verify`` walks it all.
"""
