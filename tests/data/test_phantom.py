from __future__ import annotations

import numpy as np

from fedrad.data.phantom import DEFAULT_HOSPITALS, ScannerProfile, generate_scans, phantom_site, phantom_sites


def test_same_seed_same_scans_other_seed_other_scans():
    a, b = phantom_site(DEFAULT_HOSPITALS[0], seed=1, index=0), phantom_site(DEFAULT_HOSPITALS[0], seed=1, index=0)
    c = phantom_site(DEFAULT_HOSPITALS[0], seed=2, index=0)
    np.testing.assert_array_equal(a.train.inputs, b.train.inputs)
    assert not np.array_equal(a.train.inputs, c.train.inputs)


def test_sites_have_their_own_size_prevalence_and_splits():
    sites = phantom_sites(seed=0)
    assert [s.site_id for s in sites] == [h.site_id for h in DEFAULT_HOSPITALS]
    for site, spec in zip(sites, DEFAULT_HOSPITALS, strict=True):
        total = len(site.train) + len(site.val) + len(site.test)
        assert total == spec.num_patients
        assert site.train.inputs.shape[1:] == (1, 64, 64) and site.train.inputs.dtype == np.float32
        labels = np.concatenate([site.train.targets, site.val.targets, site.test.targets])
        assert abs(labels.mean() - spec.prevalence) < 0.15
    assert len({s.num_train for s in sites}) == len(sites)  # quantity skew


def test_positive_scans_carry_a_lesion_mask_and_negatives_none():
    rng = np.random.default_rng(0)
    images, labels, masks = generate_scans(50, 0.5, ScannerProfile(), rng)
    assert images.shape == masks.shape == (50, 1, 64, 64)
    assert (masks[labels == 1].reshape(-1 if (labels == 1).any() else 0, 64 * 64).sum(axis=1) > 0).all()
    assert masks[labels == 0].sum() == 0


def test_scanner_profiles_change_how_the_same_anatomy_looks():
    a = generate_scans(30, 0.5, ScannerProfile(), np.random.default_rng(5))[0]
    b = generate_scans(30, 0.5, ScannerProfile(gain=0.6, offset=0.35, gamma=2.0, blur=1.0), np.random.default_rng(5))[0]
    assert abs(a.mean() - b.mean()) > 0.05 and abs(a.std() - b.std()) > 0.05
