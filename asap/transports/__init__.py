"""Transports: each carries AgentService calls between a Channel (client) and the Dispatcher (server)."""
