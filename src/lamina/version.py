"""lamina's version, on the ground floor so that every stage can stamp what it writes with it
without importing the package root (which reaches up to `serve` for `lamina.load`)."""

__version__ = "0.1.0"
