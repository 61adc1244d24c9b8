"""Building blocks, one family per file; train-time classes keep Apple's attribute names (checkpoint keys)."""
