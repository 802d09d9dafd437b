"""synthpref: synthetic preference data for DPO safety alignment, end to end."""

__version__ = "0.1.0"
