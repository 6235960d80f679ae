"""The package version, importable from any layer (lolscan.sources sends it as the User-Agent)."""
__version__ = "0.1.0"
