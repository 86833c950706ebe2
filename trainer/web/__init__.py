"""The update service's fleet page, JSON API and Prometheus metrics (`infantino-train serve` with web.enabled).

Only statuses and figures reach it, never images: device statuses come from their retained MQTT status topics,
head history from what the service itself published.
"""
