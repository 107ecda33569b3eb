"""Pure-data layer: manifest schemas, validation and atomic file writes (no torch)."""
