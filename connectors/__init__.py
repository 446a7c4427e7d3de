"""Protocol adapters in and out (MQTT, HTTP, CoAP, Modbus, OPC-UA) and their supervisor."""
