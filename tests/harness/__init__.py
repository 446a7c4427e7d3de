"""Private, throw-away instances of the real servers (Mosquitto, InfluxDB, PostgreSQL) for tests."""
