"""The device's web page and HTTP API (FastAPI + uvicorn in a thread of its own): live view, labelling with undo,
head history and rollback, status, /v1/predict and Prometheus /metrics. Reads the daemon through DeviceView only."""
