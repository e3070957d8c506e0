"""Tools of the repository that the inference image does not hold (run from a checkout)."""
