"""The engine of the pattern: pure rules, no I/O imports (see ARCHITECTURE in the docs)."""
