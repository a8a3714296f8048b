"""The operator loop: commands (ack, mute, unmute, maintenance, relearn) over MQTT and HTTP,
their persisted state, and the live page's snapshot of the engine."""
