"""Device lifecycle: the registry now; credentials, status, shadow, commands and OTA later."""
