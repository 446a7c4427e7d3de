"""Notifications: channels, templates, delivery policy and delivery (the one package that uses Apprise)."""
