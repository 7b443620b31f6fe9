"""Fellowship's engine: specs, state machines, the loop, LLM client, storage and events.

Nothing in this package imports Quart; the server is a thin transport over it.
"""
