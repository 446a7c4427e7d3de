"""The telemetry path: bounded bus, validation, batching, backpressure, dead letters, live fan-out."""
