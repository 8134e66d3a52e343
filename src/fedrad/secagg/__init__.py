"""Secure aggregation by pairwise masking with dropout recovery (Bonawitz et al. 2017), docs/secure_aggregation.md.

`crypto` holds the primitives (from `cryptography` and `pycryptodome`), `masking` the vector
layout and masks both ends compute alike, `participant` a site's side of the protocol and
`protocol` the server's; `fedrad.strategies.secure_agg` wraps an averaging strategy in it.
"""
