"""Differential privacy and leakage measurement (docs/privacy.md).

- `local`: DP-SGD at each site with Opacus, the budget enforced and kept in the site's state;
- `fedrad.strategies.central_dp`: DP-FedAvg, clipping and noise at the server, with dp-accounting;
- `audit`: membership inference and gradient inversion against a run's model.
"""
