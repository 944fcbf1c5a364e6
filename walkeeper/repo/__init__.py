"""The repository's layout and what lives in it above the storage (see docs in each module)."""
