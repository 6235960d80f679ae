"""Helpers every layer may use: file writes and hashes, the progress console. They import nothing
of lolscan above lolscan.errors."""
