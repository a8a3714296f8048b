"""The worker's stages: window, score (through a detector), calibrate, alert."""
