"""A device simulator: the fleet of SCENARIOS.md sending realistic telemetry over MQTT, HTTP and CoAP,
and serving the devices the platform polls over Modbus TCP and OPC-UA.

- ``signals``: deterministic signal models (freezers, power meters, batteries, door counters, a
  production line) as functions of a seed and the simulated time;
- ``fleet``: which devices exist, their type, protocol, interval and signal;
- ``provision``: makes the devices exist through the REST API and caches device credentials;
- ``drivers``: async senders (MQTT, HTTP, CoAP);
- ``modbus_server``: Modbus TCP servers (the live power meters; a fixed register map for tests);
- ``opcua_server``: an OPC-UA server, the plant's PLC (live, or with values a client writes);
- ``runner``: the scheduler (live runs at any speed, backfills of history) and its counters;
- ``cli``: the ``flatgigs simulate`` command.

The simulator is a client of the platform: it reaches it only through its public interfaces
(REST API, MQTT broker, CoAP endpoint; the platform's own connectors poll the servers it runs),
so it can drive a remote deployment as well.
"""
