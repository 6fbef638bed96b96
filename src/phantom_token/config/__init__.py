"""Parse and validate the Kong-format configuration file into frozen settings."""
