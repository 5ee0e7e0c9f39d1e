"""prefstudy: how stable are preference-alignment objectives?"""

__version__ = "0.1.0"
