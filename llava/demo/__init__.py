"""The embedded CPU demo: base models made locally (no downloads) for the demo scripts."""
