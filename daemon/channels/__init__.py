"""Channels: one seq-numbered stream of deltas per chat (`hub`), each channel with its
subscriptions and their connections' bounded outboxes (`channel`), the frames subscribers
receive (`frames`), the snapshot a chat's deltas add up to (`view`), and the pure replay
window arithmetic (`replay`). May import `store`, never an actor or a listener.
"""
