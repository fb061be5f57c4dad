"""The systems convserve is compared with; each module is a `python bench/servers/<x>.py` script."""
