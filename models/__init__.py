"""Bundled model bundles (data, not code). See each folder's MODEL_CARD.md."""
