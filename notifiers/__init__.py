"""Notifications: channels, templates, delivery policy and delivery (the only package that talks to Apprise)."""
