"""The phantom hospitals' three calibration figures, read from a `fedrad compare` run with cds and local.

    make demo && python bench/calibration.py runs/demo

1. CDS's pooled balanced accuracy (target: at least 0.90);
2. CDS minus the smallest hospital's local model, both on the pooled test set (target: at least 5 points);
3. the largest drop of a local model from its own test set to another hospital's (target: at least 5 points).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRIC = "balanced_accuracy"


def figures(summaries: list[dict]) -> dict[str, float | str]:
    by_method = {s["method"]: s for s in summaries}
    cds, local = by_method["cds"], by_method["local"]
    smallest = min(local["sites"], key=lambda site: local["sites"][site]["num_train"])
    matrix = local["cross_site"]
    drops = {
        (model, site): matrix[model]["sites"][model][METRIC] - metrics[METRIC]
        for model in matrix
        for site, metrics in matrix[model]["sites"].items()
        if site != model
    }
    (model, site), drop = max(drops.items(), key=lambda item: item[1])
    return {
        "cds_pooled": cds["pooled"][METRIC],
        "smallest_site": smallest,
        "smallest_alone_pooled": matrix[smallest]["pooled"][METRIC],
        "cds_minus_smallest": cds["pooled"][METRIC] - matrix[smallest]["pooled"][METRIC],
        "largest_cross_site_drop": drop,
        "drop_model": model,
        "drop_test_site": site,
    }


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    f = figures(json.loads((folder / "comparison.json").read_text()))
    print(f"1. CDS pooled balanced accuracy: {f['cds_pooled']:.3f} (target >= 0.90)")
    print(
        f"2. smallest hospital ({f['smallest_site']}) alone, pooled test: {f['smallest_alone_pooled']:.3f}, "
        f"{100 * f['cds_minus_smallest']:.1f} points below CDS (target >= 5)"
    )
    print(
        f"3. {f['drop_model']}'s local model loses {100 * f['largest_cross_site_drop']:.1f} points from its own "
        f"test set to {f['drop_test_site']}'s (target >= 5)"
    )


if __name__ == "__main__":
    main()
