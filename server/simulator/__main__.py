"""``python -m server.simulator``: the simulator without the rest of the CLI."""

from server.simulator.cli import app

app(prog_name="flatgigs simulate")
