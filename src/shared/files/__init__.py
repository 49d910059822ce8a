"""Uploads and artifacts on disk, and the bytes each owner may keep."""
