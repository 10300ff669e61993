"""A run that reports itself: webhooks, health pings and Prometheus textfile metrics."""
