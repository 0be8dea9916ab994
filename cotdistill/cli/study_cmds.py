"""Commands of this group register on cotdistill.cli.app.app (owner fills in)."""
from cotdistill.cli.app import app  # noqa: F401
