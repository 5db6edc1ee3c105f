"""The Moving MNIST digit classifier: labels from the generator, pair decoding, training, the cache, the CLI."""
import itertools

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pyro_cwvae.evaluation import digits as classifier
from pyro_cwvae.evaluation.digit_record import read_record
from pyro_cwvae.evaluation.digits import (PAIRS, DigitClassifier, decode_pairs, digit_pair_accuracy, evaluate,
                                         gaussian_blur, load, train, train_and_save)
from pyro_cwvae.cli.app import app
from pyro_cwvae.data import batch_rng
from pyro_cwvae.data.moving_mnist import (TEST_STREAM, GeneratedMovingMNIST, labelled_frames, labelled_video,
                                          mnist_digits, moving_mnist_video, split_digits, split_labels)
from pyro_cwvae.errors import UserError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty weights cache of the test's own."""
    monkeypatch.setenv("PYRO_CWVAE_WEIGHTS", str(tmp_path))
    load.cache_clear()
    yield tmp_path
    load.cache_clear()


def coded_pool():
    """Ten 'digits' that are solid squares of intensity 20 + 20 * label: a frame's pixels say its labels."""
    return np.stack([np.full((28, 28), 20 + 20 * label, np.uint8) for label in range(10)]), np.arange(10)


def test_split_labels_are_the_labels_of_split_digits():
    images, labels = mnist_digits()
    np.testing.assert_array_equal(split_labels("test"), labels[::5])
    np.testing.assert_array_equal(split_digits("test")[3], images[15])
    assert len(split_labels("train")) == 4000 and set(split_labels("train")) == set(range(10))


def test_labelled_video_has_the_frames_of_moving_mnist_video():
    pool = split_digits("train")
    frames, labels = labelled_video(np.random.default_rng(4), pool, split_labels("train"), 12)
    np.testing.assert_array_equal(frames, moving_mnist_video(np.random.default_rng(4), pool, 12))
    assert labels.shape == (2,)


def test_labels_name_the_digits_drawn_in_the_frames():
    pool, labels = coded_pool()
    frames, pairs = labelled_frames(np.random.default_rng(0), pool, labels, 50)
    assert frames.shape == (50, 1, 64, 64) and pairs.shape == (50, 2)
    for frame, pair in zip(frames, pairs):
        shown = {(v - 20) // 20 for v in np.unique(frame) if v}
        # The brighter square wins where they overlap, but some of each stays visible unless one covers the other.
        assert max(pair) in shown and shown <= set(pair)


def test_test_labels_come_from_the_draws_of_the_test_video():
    data = GeneratedMovingMNIST(num_test=3, test_length=20)
    for index in range(3):
        rng = batch_rng(data.seed, index, stream=TEST_STREAM)
        frames, labels = labelled_video(rng, split_digits("test"), split_labels("test"), 20)
        np.testing.assert_array_equal(frames, data.test_video(index))
        np.testing.assert_array_equal(data.test_labels(index), labels)
    with pytest.raises(IndexError):
        data.test_labels(3)


def brute_force_pair(scores):
    """The pair maximising sum_c log softmax(scores[c])[count of c in the pair], by enumeration in NumPy."""
    log_p = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
    best = max(itertools.combinations_with_replacement(range(10), 2),
               key=lambda pair: sum(log_p[c, pair.count(c)] for c in range(10)))
    return list(best)


def test_decoding_picks_the_most_probable_pair():
    scores = torch.randn(200, 10, 3, generator=torch.Generator().manual_seed(0)) * 3
    decoded = decode_pairs(scores)
    assert decoded.tolist() == [brute_force_pair(s) for s in scores.double().numpy()]


def test_decoding_reads_a_double_digit_and_orders_pairs():
    scores = torch.full((2, 10, 3), -5.0)
    scores[:, :, 0] = 5.0  # every class absent ...
    scores[0, 7] = torch.tensor([-5.0, 0.0, 5.0])  # ... except two 7s
    scores[1, 8, 1] = scores[1, 2, 1] = 10.0  # ... except one 8 and one 2
    assert decode_pairs(scores).tolist() == [[7, 7], [2, 8]]
    assert len(PAIRS) == 55 and len({tuple(p) for p in PAIRS.tolist()}) == 55


class CodedReader(torch.nn.Module):
    """A stand-in classifier: reads the pair written into pixels (0, 0) and (0, 1) as class = intensity / 10."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, frames):
        classes = (frames[:, 0, 0, :2] * 255 / 10).round().long()
        counts = torch.nn.functional.one_hot(classes, 10).sum(1)
        return torch.nn.functional.one_hot(counts, 3).float() * 10


def test_pair_accuracy_per_frame_with_labels_broadcast_over_samples_and_time():
    samples, sequences, frames_per = 2, 3, 4
    truth = np.array([[4, 1], [9, 9], [0, 5]])  # as the generator gives them: not sorted
    frames = np.zeros((samples, sequences, frames_per, 1, 64, 64), np.uint8)
    frames[..., 0, 0, :2] = truth[None, :, None, ::-1] * 10  # the true pair, written in reverse order
    frames[1, 2, 3, 0, 0, :2] = [30, 50]  # one frame shows another pair
    correct = digit_pair_accuracy(frames, truth[:, None, :], net=CodedReader())
    assert correct.shape == (samples, sequences, frames_per) and correct.dtype == bool
    assert correct.sum() == correct.size - 1 and not correct[1, 2, 3]
    floats = digit_pair_accuracy(torch.from_numpy(frames).float() / 255, truth[:, None, :], net=CodedReader())
    np.testing.assert_array_equal(floats, correct)


def test_per_digit_accuracy_counts_each_true_digit():
    frames = np.zeros((3, 1, 64, 64), np.uint8)
    frames[:, 0, 0, :2] = [[10, 20], [30, 30], [30, 40]]  # reads (1, 2), (3, 3), (3, 4)
    pair_accuracy, per_digit = evaluate(CodedReader(), frames, np.array([[1, 2], [3, 5], [3, 4]]))
    assert pair_accuracy == pytest.approx(2 / 3)
    assert per_digit == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0, "5": 0.0}


def test_training_blur_is_scipys_gaussian_filter_per_frame():
    from scipy import ndimage  # the test extra's reference
    frames = torch.rand(3, 1, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = [0.0, 0.7, 2.0]
    blurred = gaussian_blur(frames, torch.tensor(sigma)).numpy()
    np.testing.assert_array_equal(blurred[0], frames[0].numpy())
    for frame, out, s in zip(frames[1:, 0].numpy(), blurred[1:, 0], sigma[1:]):
        np.testing.assert_allclose(out, ndimage.gaussian_filter(frame, s, mode="constant", truncate=4 / s), atol=1e-12)


def test_training_lowers_the_loss():
    _, losses = train(steps=16, batch_size=8, lr=3e-3, seed=0)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_cache_round_trip_loads_weights_only_and_refuses_a_changed_file(cache):
    record = train_and_save(steps=2, batch_size=4, test_videos=2)
    path = cache / "digit-classifier.pt"
    assert read_record() == record and record.steps == 2 and 0.0 <= record.pair_accuracy <= 1.0
    state = torch.load(path, weights_only=True)
    net = load(path)
    assert not net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    path.write_bytes(path.read_bytes() + b"\0")
    load.cache_clear()
    with pytest.raises(UserError, match="SHA-256") as error:
        load(path)
    assert "\n" not in str(error.value)


def test_digit_classifier_trains_at_first_use_then_reads_the_cache(cache, monkeypatch):
    calls = []

    def small_training(progress, path):
        calls.append(path)
        return train_and_save(steps=1, batch_size=2, path=path, test_videos=1)

    monkeypatch.setattr(classifier, "train_and_save", small_training)
    first = classifier.digit_classifier(say=None)
    second = classifier.digit_classifier(say=None)
    assert isinstance(first, DigitClassifier) and second is first and len(calls) == 1


def test_cli_trains_reports_and_refuses_a_damaged_cache(cache):
    runner = CliRunner()
    options = ["--steps", "2", "--batch-size", "4", "--test-videos", "2", "--quiet"]
    result = runner.invoke(app, ["classifier", "train", *options])
    assert result.exit_code == 0 and "pair accuracy" in result.output
    result = runner.invoke(app, ["classifier", "train", "--steps", "2"])
    assert result.exit_code == 0 and "is cached" in result.output
    assert "per digit" in runner.invoke(app, ["classifier", "info"]).output
    (cache / "digit-classifier.pt").write_bytes(b"not the weights")
    load.cache_clear()
    result = runner.invoke(app, ["classifier", "info"])
    assert result.exit_code == 2 and "SHA-256" in result.output and len(result.output.strip().splitlines()) == 1


def test_classifier_train_keeps_a_cached_classifier_unless_forced(monkeypatch):
    """The command's wiring only (training itself is tested above): --force trains anew, without it a cached
    classifier is kept."""
    from pyro_cwvae.cli import classifier as command
    from pyro_cwvae.evaluation.digit_record import Record

    cached = Record(sha256="0" * 64, steps=5, batch_size=8, seed=0, pair_accuracy=0.5)
    trained = []
    monkeypatch.setattr(command, "read_record", lambda: cached)
    monkeypatch.setattr(classifier, "train_and_save", lambda *args, **kwargs: trained.append(args) or cached)
    kept = CliRunner().invoke(app, ["classifier", "train", "--steps", "3", "--quiet"])
    assert kept.exit_code == 0 and "a classifier is cached" in kept.output and trained == []
    forced = CliRunner().invoke(app, ["classifier", "train", "--steps", "3", "--quiet", "--force"])
    assert forced.exit_code == 0 and "trained in" in forced.output and trained[0][0] == 3
