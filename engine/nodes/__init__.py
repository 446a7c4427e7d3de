"""Built-in rule nodes. Importing this package registers them in ``engine.registry.REGISTRY``."""

from engine.nodes import actions, conditions, triggers

__all__ = ["actions", "conditions", "triggers"]
