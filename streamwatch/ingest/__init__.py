"""Bytes in, readings out: the pure payload decoder and the MQTT link that feeds it."""
