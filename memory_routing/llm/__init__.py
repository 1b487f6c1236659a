"""LiteLLM: the one place it is loaded and configured (its import takes seconds)."""
