"""The editor's pages, one module per area; ``editor.app`` mounts their routers."""
