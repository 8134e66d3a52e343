"""Measures computed from run summaries (bias across sites, recency, cross-site transfer)."""
