"""The HTTP surface: REST routers under /api/v1, auth and tenant context, problem+json errors."""
