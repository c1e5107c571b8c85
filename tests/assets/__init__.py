"""Test assets built at test time (the tiny TCG guest)."""
