"""puzzle."""
