"""Runnable recipes built on fourierft's public API. The library never imports this package."""
