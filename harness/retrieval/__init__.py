"""Scoring, padding and the embedding cache."""
