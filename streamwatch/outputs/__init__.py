"""What the daemon shows the world: alert payloads, Prometheus metrics, the HTTP endpoint."""
