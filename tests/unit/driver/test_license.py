"""Licence classification: case-sensitive prefix, non-padded expiry dates."""

from datetime import UTC, datetime

import pytest

from agent.driver.license import classify_license


def test_licensed_non_padded_expiry():
    lic = classify_license("Licensed (Expiry: 2026-7-7 16:1:44 GMT)")
    assert lic.licensed
    assert lic.expiry == datetime(2026, 7, 7, 16, 1, 44, tzinfo=UTC)
    assert not lic.permanent


def test_licensed_padded_expiry():
    lic = classify_license("Licensed (Expiry: 2026-12-31 23:59:59 GMT)")
    assert lic.expiry == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize("status", ["Licensed (Expiry: Permanent)", "Licensed (Permanent)"])
def test_permanent(status):
    lic = classify_license(status)
    assert lic.licensed and lic.permanent and lic.expiry is None


@pytest.mark.parametrize("status", ["Licensed", "Licensed (Expiry: N/A)",
                                    "Licensed (Expiry: 2026-13-40 1:1:1 GMT)"])
def test_licensed_without_usable_expiry(status):
    lic = classify_license(status)
    assert lic.licensed and lic.expiry is None and not lic.permanent


@pytest.mark.parametrize("status", ["Unlicensed", "Unlicensed (Unrestricted)",
                                    "Unlicensed (Restricted)"])
def test_every_unlicensed_form(status):
    lic = classify_license(status)
    assert lic.state == "unlicensed"
    assert not lic.licensed


@pytest.mark.parametrize("status", ["Unknown", "N/A", "", None, "licensed", "LICENSED"])
def test_unknown_and_wrong_case(status):
    # "licensed" in lower case is not NVIDIA's spelling: never treat it as Licensed.
    assert classify_license(status).state == "unknown"
