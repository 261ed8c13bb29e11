"""The batch profile: parsing --batch, refusing batches outside it, and cutting big batches into chunks."""
from __future__ import annotations

import pytest

from pipeline.build.profile import BatchProfile, chunks, parse_batch
from pipeline.errors import TokenGateError


def test_parses_min_opt_max_and_a_single_size():
    assert parse_batch("1,32,128") == BatchProfile(1, 32, 128)
    assert parse_batch(" 4, 8 ,16") == BatchProfile(4, 8, 16)
    assert parse_batch("8") == BatchProfile(8, 8, 8)


@pytest.mark.parametrize("text, message", [("1,32", "has 2 sizes"), ("a,b,c", "is not MIN,OPT,MAX"),
                                           ("0,1,2", "1 <= MIN"), ("4,2,8", "1 <= MIN"), ("1,64,32", "1 <= MIN")])
def test_refuses_bad_batch_arguments(text, message):
    with pytest.raises(TokenGateError, match=message):
        parse_batch(text)


def test_shapes_for_the_optimization_profile():
    assert BatchProfile(1, 32, 128).shapes((3, 224, 224)) == ((1, 3, 224, 224), (32, 3, 224, 224),
                                                              (128, 3, 224, 224))


def test_batch_above_the_profile_says_the_range_and_offers_chunks():
    profile = BatchProfile(1, 32, 128)
    profile.check(1)
    profile.check(128)
    with pytest.raises(TokenGateError) as info:
        profile.check(300, "m.engine")
    message = str(info.value)
    assert "batch 300 is outside the profile of m.engine, which takes batches 1 to 128" in message
    assert "chunks of at most 128" in message and "auto_chunk=True" in message and "--batch 1," in message


def test_batch_below_the_profile_says_how_to_fix_it():
    with pytest.raises(TokenGateError, match="batch 2 is below the profile.*takes batches 4 to 8.*pad the batch"):
        BatchProfile(4, 8, 8).check(2)


@pytest.mark.parametrize("batch, high, low", [(300, 128, 1), (128, 128, 1), (5, 8, 1), (10, 8, 4), (1000, 7, 3),
                                              (17, 16, 2)])
def test_chunks_cover_the_batch_in_order_within_the_profile(batch, high, low):
    parts = chunks(batch, high, low)
    assert [i for part in parts for i in range(part.start, part.stop)] == list(range(batch))
    assert all(low <= part.stop - part.start <= high for part in parts)


def test_chunks_are_full_except_a_tail_that_would_be_too_small():
    assert [p.stop - p.start for p in chunks(300, 128)] == [128, 128, 44]
    assert [p.stop - p.start for p in chunks(10, 8, 4)] == [5, 5]  # 8 + 2 would leave 2 < min 4


def test_plan_chunks_only_when_asked():
    profile = BatchProfile(1, 32, 128)
    assert profile.plan(64, auto_chunk=False) == [slice(0, 64)]
    assert profile.plan(200, auto_chunk=True) == [slice(0, 128), slice(128, 200)]
    with pytest.raises(TokenGateError, match="outside the profile"):
        profile.plan(200, auto_chunk=False)


def test_plan_refuses_what_no_chunking_can_fix():
    with pytest.raises(TokenGateError, match="below the profile"):
        BatchProfile(8, 8, 8).plan(11, auto_chunk=True)  # 8 + 3, or 6 + 5: never 8 + 8
