"""Small utilities every layer may use (they import nothing else of the package): Hub ids and public names."""
