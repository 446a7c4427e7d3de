"""The visual rule editor: server-rendered pages (Jinja2) with HTMX fragments, signed-cookie sessions.

It is a client of the same services as the API (rule repository, node registry, compiler, device
registry, alarm service, telemetry store); nothing here decides anything the API would decide
differently. ``editor.app.mount_editor`` adds it to an application.
"""
