"""Helpers for the browser tests (tests/test_browser.py)."""
