"""ACP (Agent Client Protocol) plumbing: JSON-RPC over NDJSON, message types, the mapping of
agent updates to deltas, and the client-side services (files, terminals) the daemon offers
to agents."""
