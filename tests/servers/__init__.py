"""Loopback HTTP servers that stand in for the Hugging Face Hub and Civitai in tests."""
