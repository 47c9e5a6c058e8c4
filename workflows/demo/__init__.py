"""The demo workflows and their sample traffic."""
