"""streamwatch: an anomaly-detection daemon for industrial MQTT sensor streams."""

DIST_NAME = "streamwatch-edge"
"""The distribution name (``pip install``); the import name and the command are ``streamwatch``."""
