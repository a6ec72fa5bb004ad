"""Model recipes, loading, and the tiny self-test model."""
