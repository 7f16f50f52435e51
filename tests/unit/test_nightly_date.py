"""--date: an ISO date, or `today` / `yesterday` resolved to UTC dates when the job runs, so a
scheduled manifest can carry the word and each night scores its own partition."""

from __future__ import annotations

import datetime as dt

import pytest

from mlc_dist.config import JobConfigError
from mlc_dist.scoring.nightly import resolve_date, substitute_date

MARCH_1 = dt.date(2028, 3, 1)  # a leap year: yesterday is Feb 29


def test_words_resolve_against_the_given_day():
    assert resolve_date("yesterday", today=MARCH_1) == "2028-02-29"
    assert resolve_date("today", today=MARCH_1) == "2028-03-01"
    assert resolve_date("2024-05-01", today=MARCH_1) == "2024-05-01"
    assert substitute_date("s3://b/drops/date={date}/*.parquet", "yesterday", "score.input",
                           today=MARCH_1) == "s3://b/drops/date=2028-02-29/*.parquet"
    assert substitute_date(["a/{date}", "b"], "today", "score.input", today=MARCH_1) == \
        ["a/2028-03-01", "b"]
    assert substitute_date("no-partition", "nonsense", "score.input") == "no-partition"


def test_without_a_given_day_the_words_are_utc_dates_now():
    before = dt.datetime.now(dt.timezone.utc).date()
    today, yesterday = resolve_date("today"), resolve_date("yesterday")
    after = dt.datetime.now(dt.timezone.utc).date()
    assert today in (before.isoformat(), after.isoformat())
    assert dt.date.fromisoformat(yesterday) + dt.timedelta(days=1) in (before, after)


@pytest.mark.parametrize("bad", ["tomorrow", "Yesterday", "2024-13-01", "20240501", "2024-5-1", ""])
def test_anything_else_is_a_config_error(bad):
    with pytest.raises(JobConfigError, match="--date"):
        substitute_date("out/date={date}", bad, "score.output", today=MARCH_1)


def test_a_date_partition_without_date_names_the_key():
    with pytest.raises(JobConfigError, match="score.output.*--date"):
        substitute_date("out/date={date}", None, "score.output")
