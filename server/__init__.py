"""Composition root: settings, the application factory, lifespan wiring and the ``flatgigs`` CLI."""
