"""Licence classification (case-sensitive prefix, non-padded expiry dates) and lease risk."""

from datetime import UTC, datetime, timedelta

import pytest

from agent.driver.license import (
    AT_RISK,
    LAPSED,
    LEASE_OK,
    LeaseBook,
    LeaseSeen,
    classify_license,
    judge_lease,
    remember,
)


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


# Lease judging: real-format status lines, the times they were captured at (public guest
# captures: a lease about a day long, one about two days long), and a 30-day one.
H = timedelta(hours=1)
MIN = timedelta(hours=4)


@pytest.mark.parametrize(("status", "now", "left"), [
    ("Licensed (Expiry: 2024-10-19 6:51:17 GMT)", datetime(2024, 10, 18, 10, 51, 17), 20 * H),
    ("Licensed (Expiry: 2025-10-5 1:57:32 GMT)", datetime(2025, 10, 3, 1, 57, 32), 48 * H),
    ("Licensed (Expiry: 2026-7-7 16:1:44 GMT)", datetime(2026, 6, 7, 16, 1, 44), 720 * H),
])
def test_real_leases_hours_long_are_healthy(status, now, left):
    lic = classify_license(status)
    level, why = judge_lease(lic, now.replace(tzinfo=UTC), min_remaining=MIN)
    assert (level, why) == (LEASE_OK, f"licensed, lease ends in {left / H:.1f} h")


@pytest.mark.parametrize("status", ["Unlicensed", "Unlicensed (Restricted)",
                                    "Unlicensed (Unrestricted)", "Unknown", None, "licensed"])
def test_unlicensed_forms_lapse(status):
    level, why = judge_lease(classify_license(status), datetime(2026, 1, 1, tzinfo=UTC),
                             min_remaining=MIN)
    assert level == LAPSED and why.startswith("not licensed (")


def test_expired_lease_lapses():
    lic = classify_license("Licensed (Expiry: 2026-7-7 16:1:44 GMT)")
    level, why = judge_lease(lic, lic.expiry + H / 2, min_remaining=MIN)
    assert (level, why) == (LAPSED, "licence lease expired at 2026-07-07T16:01:44+00:00 "
                                    "(0.5 h ago)")


@pytest.mark.parametrize("status", ["Licensed", "Licensed (Expiry: N/A)",
                                    "Licensed (Expiry: Permanent)"])
def test_licensed_without_an_expiry_is_healthy(status):
    assert judge_lease(classify_license(status), datetime(2030, 1, 1, tzinfo=UTC),
                       min_remaining=MIN)[0] == LEASE_OK


def test_less_than_the_minimum_left_is_at_risk():
    lic = classify_license("Licensed (Expiry: 2026-7-7 16:1:44 GMT)")
    level, why = judge_lease(lic, lic.expiry - 3 * H, min_remaining=MIN)
    assert level == AT_RISK and "ends in 3.0 h, under the 4.0 h minimum" in why
    assert judge_lease(lic, lic.expiry - 5 * H, min_remaining=MIN)[0] == LEASE_OK


def test_a_lease_that_stands_still_past_half_its_time_is_at_risk():
    lic = classify_license("Licensed (Expiry: 2026-7-7 16:1:44 GMT)")
    first = lic.expiry - 20 * H
    seen = remember(None, lic, first)
    assert seen == LeaseSeen(lic.expiry, first)
    assert remember(seen, lic, first + 5 * H) is seen  # same expiry: first sighting kept
    assert judge_lease(lic, first + 10 * H, min_remaining=MIN, seen=seen)[0] == LEASE_OK
    level, why = judge_lease(lic, first + 10.5 * H, min_remaining=MIN, seen=seen)
    assert level == AT_RISK
    assert why == ("licence lease not renewed: expiry 2026-07-07T16:01:44+00:00 unchanged "
                   "for 10.5 h, 9.5 h left")


def test_a_renewed_lease_starts_a_new_memory():
    old = classify_license("Licensed (Expiry: 2026-7-7 16:1:44 GMT)")
    new = classify_license("Licensed (Expiry: 2026-7-8 16:1:44 GMT)")
    seen = remember(None, old, old.expiry - 20 * H)
    later = old.expiry - 8 * H
    renewed = remember(seen, new, later)
    assert renewed == LeaseSeen(new.expiry, later)
    assert judge_lease(new, later, min_remaining=MIN, seen=renewed)[0] == LEASE_OK
    assert remember(renewed, classify_license("Unlicensed"), later) is None


def test_lease_book_keeps_each_gpu_and_forgets_gone_ones():
    book = LeaseBook()
    t0 = datetime(2026, 7, 6, tzinfo=UTC)
    a, b = "00000000:00:02.0", "00000000:00:03.0"
    status = "Licensed (Expiry: 2026-7-7 16:1:44 GMT)"
    first = book.update({a: status, b: status}, t0)
    assert set(first) == {a, b}
    second = book.update({a: status, b: "Unlicensed"}, t0 + H)
    assert second == {a: LeaseSeen(first[a].expiry, t0)}
    assert book.update({}, t0 + 2 * H) == {}
