"""The local management API (SPEC §10): agents, enforcement, checkpoints, webhooks."""
