"""Bytes in, readings out: the pure payload decoder and the links (MQTT, NATS JetStream) that
feed it, behind one interface (link.py)."""
