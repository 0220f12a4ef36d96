"""Channels: one seq-numbered stream of deltas per chat, kept in a ring and in the store's log,
fanned out to subscribers through bounded outboxes (`hub`, `outbox`), and the pure replay
window arithmetic (`replay`). May import `store`, never an actor or a listener.
"""
