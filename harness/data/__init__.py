"""BEIR-format folders: reading and validation."""
