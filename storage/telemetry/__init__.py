"""Telemetry stores: one port, an embedded implementation (default) and InfluxDB (production)."""
