"""Bucketed whole-utterance scoring with real jitted separation functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from galr_jax.evaluation import metrics, scoring

SAMPLE_RATE = 1000  # small rate: utterances of a few hundred samples keep tests fast
BUCKET_SECONDS = (0.4, 0.8)
LOW_PASS = np.full(8, 1 / 8)  # causal moving average: source 0 = low band of the mixture
SDR_TAPS = 64  # a short BSS-eval filter keeps these tests fast; metrics tests cover 512


def make_utterances(lengths, seed=0):
    """Mixtures whose two sources are the low band and the rest of a signal.

    A fixed causal filter of the mixture separates them exactly, so a jitted
    function can act as an oracle separator without seeing the sources.
    """
    rng = np.random.default_rng(seed)
    utterances = []
    for index, length in enumerate(lengths):
        # The DC offset exposes any mean removal that counts the zero padding.
        mixture = rng.standard_normal(length) + 0.5
        low = scipy.signal.lfilter(LOW_PASS, [1.0], mixture)
        sources = np.stack([low, mixture - low]).astype(np.float32)
        utterances.append((f"utt{index}", mixture.astype(np.float32), sources))
    return utterances


class ShapeRecorder:
    """Wraps a jitted separation function; records the shapes and lengths it is called with."""

    def __init__(self, function):
        self.function = function
        self.shapes = []
        self.lengths = []

    def __call__(self, mixture, lengths):
        self.shapes.append(mixture.shape)
        self.lengths.append(np.asarray(lengths).tolist())
        return self.function(mixture, lengths)


@jax.jit
def near_oracle(mixture, lengths):
    """True sources plus a distortion that depends on the valid part: [B, T] -> [B, 2, T].

    The distortion is taken around the mean of the first ``lengths`` samples, so the
    estimates depend on the padding unless ``evaluate`` passes each row's true length
    (a stand-in for the model's length handling, which the model tests check).
    """
    kernel = jnp.asarray(LOW_PASS, jnp.float32)
    low = jax.vmap(lambda m: jnp.convolve(m, kernel)[:m.shape[0]])(mixture)
    valid = jnp.arange(mixture.shape[1])[None, :] < lengths[:, None]
    mean = jnp.sum(jnp.where(valid, mixture, 0.0), axis=1, keepdims=True) / lengths[:, None]
    distortion = jnp.where(valid, 0.05 * jnp.tanh(3.0 * (mixture - mean)), 0.0)
    return jnp.stack([mixture - low + distortion, low - distortion], axis=1)  # swapped order


@jax.jit
def repeated_mixture(mixture, lengths):
    del lengths  # the mixture itself: its scores do not depend on it
    return jnp.stack([mixture, mixture], axis=1)


def test_bucket_length():
    buckets = (400, 800)
    assert scoring.bucket_length(1, buckets) == 400
    assert scoring.bucket_length(400, buckets) == 400
    assert scoring.bucket_length(401, buckets) == 800
    assert scoring.bucket_length(800, (800, 400)) == 800
    assert scoring.bucket_length(801, buckets) == 1600
    assert scoring.bucket_length(2401, buckets) == 3200
    with pytest.raises(ValueError, match="positive"):
        scoring.bucket_length(0, buckets)


def test_make_buckets_plans_bounded_full_batches():
    lengths = [100, 500, 300, 900, 450, 350, 399, 1700, 20]
    batches = scoring.make_buckets(lengths, BUCKET_SECONDS, SAMPLE_RATE, batch_size=2)
    assert batches == [
        scoring.Batch((0, 2), 400),
        scoring.Batch((1, 4), 800),
        scoring.Batch((5, 6), 400),
        scoring.Batch((8,), 400),
        scoring.Batch((3,), 1600),
        scoring.Batch((7,), 2400),  # beyond the largest bucket: a multiple of it
    ]
    assert sorted(i for b in batches for i in b.indices) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch.indices) <= 2
        assert all(lengths[i] <= batch.padded_length for i in batch.indices)
    with pytest.raises(ValueError, match="batch_size"):
        scoring.make_buckets(lengths, BUCKET_SECONDS, SAMPLE_RATE, batch_size=0)


def test_oracle_scores_high_and_repeated_mixture_scores_zero():
    utterances = make_utterances([350, 700, 120, 790, 400, 610])
    kwargs = dict(sample_rate=SAMPLE_RATE, bucket_seconds=BUCKET_SECONDS, batch_size=4,
                  compute_sdr=True, sdr_filter_length=SDR_TAPS, progress=False)
    oracle = scoring.evaluate(near_oracle, utterances, **kwargs)
    assert [r["id"] for r in oracle.records] == [u[0] for u in utterances]
    assert [r["length"] for r in oracle.records] == [350, 700, 120, 790, 400, 610]
    for record in oracle.records:
        assert record["si_snri"] > 15.0 and record["sdri"] > 15.0
        assert record["permutation"] == [1, 0]
    repeated = scoring.evaluate(repeated_mixture, utterances, **kwargs)
    for record in repeated.records:
        assert abs(record["si_snri"]) < 1e-4
        assert abs(record["sdri"]) < 1e-6
    summary = oracle.summary
    assert summary["count"] == len(utterances)
    si_snri = [r["si_snri"] for r in oracle.records]
    assert summary["si_snri_mean"] == pytest.approx(np.mean(si_snri))
    assert summary["si_snri_median"] == pytest.approx(np.median(si_snri))
    assert {"si_snr_mean", "sdr_mean", "sdri_median"} <= set(summary)


def test_scores_see_only_the_valid_samples_of_every_bucket():
    """evaluate's half of padding invariance: true lengths to the separator and the scores.

    The model's half (its output does not depend on the padding it is told about) is
    tested on the real model in the model tests and in test_eval.py.
    """
    lengths = [333, 517, 129]
    utterances = make_utterances(lengths, seed=1)
    kwargs = dict(sample_rate=SAMPLE_RATE, batch_size=2, compute_sdr=True,
                  sdr_filter_length=SDR_TAPS, progress=False)
    # Buckets equal to the lengths: no padding in time (the batch rows are still padded).
    exact = scoring.evaluate(near_oracle, utterances,
                                bucket_seconds=[n / SAMPLE_RATE for n in lengths], **kwargs)
    padded = scoring.evaluate(near_oracle, utterances, bucket_seconds=(1.0,), **kwargs)
    for a, b in zip(exact.records, padded.records):
        for key in ("si_snr", "si_snri", "sdr", "sdri"):
            assert abs(a[key] - b[key]) < 1e-4, (a["id"], key, a[key], b[key])


def test_shapes_bounded_by_buckets_and_batches_follow_the_plan():
    lengths = [50, 390, 410, 799, 230, 640, 300, 12, 777, 405, 1500]
    utterances = make_utterances(lengths, seed=2)
    recorder = ShapeRecorder(repeated_mixture)
    result = scoring.evaluate(recorder, iter(utterances), sample_rate=SAMPLE_RATE,
                                 bucket_seconds=BUCKET_SECONDS, batch_size=3, progress=False)
    plan = scoring.make_buckets(lengths, BUCKET_SECONDS, SAMPLE_RATE, batch_size=3)
    assert recorder.shapes == [(3, batch.padded_length) for batch in plan]
    # Each row's own length; rows that only fill the batch count as full length.
    assert recorder.lengths == [[lengths[i] for i in batch.indices]
                                + [batch.padded_length] * (3 - len(batch.indices))
                                for batch in plan]
    # Two buckets plus the 1600-sample round-up of the one utterance above 0.8 s.
    assert set(recorder.shapes) == {(3, 400), (3, 800), (3, 1600)}
    assert [r["id"] for r in result.records] == [u[0] for u in utterances]
    assert "sdr" not in result.records[0]


def test_batch_padded_to_a_multiple_of_devices():
    utterances = make_utterances([300, 310, 320, 330, 340], seed=3)
    kwargs = dict(sample_rate=SAMPLE_RATE, bucket_seconds=BUCKET_SECONDS, batch_size=3,
                  progress=False)
    recorder = ShapeRecorder(near_oracle)
    multi = scoring.evaluate(recorder, utterances, num_devices=2, **kwargs)
    assert set(recorder.shapes) == {(4, 400)}
    single = scoring.evaluate(near_oracle, utterances, **kwargs)
    for a, b in zip(multi.records, single.records):
        assert a["si_snri"] == pytest.approx(b["si_snri"], abs=1e-5)


def test_invalid_inputs_are_reported():
    kwargs = dict(sample_rate=SAMPLE_RATE, bucket_seconds=BUCKET_SECONDS, batch_size=2,
                  progress=False)
    good = make_utterances([100, 200])
    three_sources = ("bad", good[1][1], np.stack([good[1][1]] * 3))
    with pytest.raises(ValueError, match="utterance bad: 3 sources"):
        scoring.evaluate(repeated_mixture, [good[0], three_sources], **kwargs)
    with pytest.raises(ValueError, match="utterance x: sources must be"):
        scoring.evaluate(repeated_mixture, [("x", np.zeros(10), np.zeros((2, 9)))], **kwargs)
    with pytest.raises(ValueError, match="separate_fn returned shape"):
        scoring.evaluate(jax.jit(lambda m, n: m[:, None, :]), good, **kwargs)
    empty = scoring.evaluate(repeated_mixture, [], **kwargs)
    assert empty.records == [] and empty.summary == {"count": 0}


def test_perceptual_columns_follow_the_installed_packages():
    utterances = make_utterances([300, 420])
    result = scoring.evaluate(repeated_mixture, utterances, sample_rate=SAMPLE_RATE,
                                 bucket_seconds=BUCKET_SECONDS, batch_size=4, perceptual=True,
                                 progress=False)
    extra = set(result.records[0]) - {"id", "length", "si_snr", "si_snri", "permutation"}
    # PESQ is undefined at this rate, so only STOI can appear, and only if installed.
    expected = {"stoi"} & set(metrics.available_perceptual_metrics())
    assert extra == expected
    assert {f"{name}_mean" for name in expected} <= set(result.summary)
