"""Training away from ../shared: the FER+ pack, slim checkpoints, a schedule fitted to a time budget,
and a ``moodlens train`` that needs neither the database nor the video stack."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared
from moodlens.errors import MoodlensError
from moodlens.training.ferplus import SPLITS, FerSplit, load_packed, load_split, load_splits, pack

# random crops show no face, so YuNet landmarks none of them and the mean template is undefined (NaN):
# these tests are about storage and schedules, which do not depend on it
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning",
                                        "ignore:invalid value encountered in divide:RuntimeWarning")


def _fake_ferplus(root: Path, n: dict[str, int], seed: int = 0) -> Path:
    """A FER+ root of random 48 px crops with 10-annotator votes (no unknown majorities); its landmark
    cache goes to ``root/../cache``, not the user's."""
    rng = np.random.default_rng(seed)
    (root.parent / "cache").mkdir(exist_ok=True)
    for name, count in n.items():
        folder = root / name
        folder.mkdir(parents=True)
        with open(folder / "label.csv", "w", newline="") as f:
            w = csv.writer(f)
            for i in range(count):
                file = f"fer{i:07d}.png"
                cv2.imwrite(str(folder / file), rng.integers(0, 256, (48, 48), dtype=np.uint8))
                votes = np.zeros(10, int)
                votes[i % 8] = 6
                votes[(i + 1) % 8] += 4
                w.writerow([file, "(0, 0, 48, 48)", *votes])
    return root


def _fake_pack(tmp_path: Path, train: int, valid: int) -> tuple[Path, dict]:
    """A pack of a fake FER+ root, and the FER2013Train provenance a run on it records."""
    splits, _, provenance = load_splits(_fake_ferplus(tmp_path / "ferplus", {"FER2013Train": train,
                                                                             "FER2013Valid": valid}), tmp_path)
    pack(splits, tmp_path / "ferplus.npz")
    return tmp_path / "ferplus.npz", provenance["FER2013Train"]


def _same(a: FerSplit, b: FerSplit) -> None:
    assert a.files == b.files and a.data_sha256 == b.data_sha256
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.votes, b.votes)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)  # NaN where YuNet found none, in both


def test_pack_gives_back_the_same_splits_and_provenance(tmp_path):
    root = _fake_ferplus(tmp_path / "ferplus", {"FER2013Train": 170, "FER2013Valid": 7})  # 170: two mosaic rows
    folder_splits, template, provenance = load_splits(root, tmp_path)
    size = pack(folder_splits, tmp_path / "ferplus.npz")
    assert size == (tmp_path / "ferplus.npz").stat().st_size
    packed_splits, packed_template, packed_provenance = load_splits(tmp_path / "ferplus.npz", tmp_path / "run")
    assert set(packed_splits) == set(SPLITS)
    for name in SPLITS:
        _same(folder_splits[name], packed_splits[name])
    assert packed_provenance == provenance  # a run on the pack records the same data hashes
    np.testing.assert_array_equal(packed_template, template)


def test_pack_is_lossless_on_real_ferplus_crops_and_smaller(tmp_path):
    valid = shared("ferplus", "FER2013Valid")
    split = load_split(valid)  # no cache: YuNet landmarks, as a run computes them
    path = tmp_path / "valid.npz"
    pack({"FER2013Valid": split}, path)
    _same(split, load_packed(path)["FER2013Valid"])
    on_disk = sum(p.stat().st_size for p in valid.iterdir())
    assert path.stat().st_size < 0.85 * on_disk


def test_a_damaged_or_partial_pack_is_a_clear_error(tmp_path):
    root = _fake_ferplus(tmp_path / "ferplus", {"FER2013Train": 5, "FER2013Valid": 3})
    splits, _, _ = load_splits(root, tmp_path)
    good = tmp_path / "good.npz"
    pack(splits, good)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MoodlensError, match="cut.npz: not a readable FER\\+ pack"):
        load_splits(cut, tmp_path)
    text = tmp_path / "text.npz"
    text.write_text("not a pack\n")
    with pytest.raises(MoodlensError, match="text.npz"):
        load_splits(text, tmp_path)
    partial = tmp_path / "valid-only.npz"
    pack({"FER2013Valid": splits["FER2013Valid"]}, partial)
    with pytest.raises(MoodlensError, match="holds FER2013Train, FER2013Valid; this one holds FER2013Valid"):
        load_splits(partial, tmp_path)
    # pixels that no longer match the hash recorded at packing are refused, not trained on
    other = FerSplit(splits["FER2013Valid"].files, splits["FER2013Valid"].images, splits["FER2013Valid"].votes,
                     splits["FER2013Valid"].landmarks, "x")
    tampered = tmp_path / "tampered.npz"
    pack({"FER2013Train": splits["FER2013Train"], "FER2013Valid": other}, tampered)
    with np.load(tampered) as z:
        arrays = dict(z)
    arrays["FER2013Valid/pixels_sha256"] = np.asarray("0" * 64)
    np.savez(tampered, **arrays)
    with pytest.raises(MoodlensError, match="FER2013Valid images do not match"):
        load_splits(tampered, tmp_path)


def test_train_cli_runs_without_the_database_or_video_stack(tmp_path):
    code = ("import sys, moodlens.cli_train as c; "
            "assert not {'sqlalchemy', 'av', 'plotly'} & set(sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "moodlens.cli_train", "pack", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Examples" in r.stdout


def test_train_pack_command_writes_a_pack_and_refuses_a_non_ferplus_folder(tmp_path):
    root = _fake_ferplus(tmp_path / "ferplus", {"FER2013Train": 4, "FER2013Valid": 2})
    cli = [sys.executable, "-m", "moodlens.cli", "train", "pack"]
    r = subprocess.run([*cli, "--data", str(root), "--out", str(tmp_path / "p" / "ferplus.npz")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert set(load_packed(tmp_path / "p" / "ferplus.npz")) == set(SPLITS)
    r = subprocess.run([*cli, "--data", str(tmp_path), "--out", str(tmp_path / "x.npz")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "not a FER+ root" in r.stderr and not (tmp_path / "x.npz").exists()


def test_fit_epochs_fits_the_schedule_and_lengthens_it_again_only_early():
    pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.training.train import fit_epochs

    h = lambda *s: [{"seconds": x} for x in s]  # noqa: E731
    assert fit_epochs(60, 60, h(10.0), None) == 60  # no budget
    assert fit_epochs(60, 60, [], 100.0) == 60  # nothing measured yet
    assert fit_epochs(60, 60, h(10.0), 1000.0) == 60  # fits: left alone, never past what was asked
    assert fit_epochs(60, 60, h(10.0), 305.0) == 30  # 10 s an epoch: 30 fit in 305 s
    assert fit_epochs(60, 60, h(10.0, 10.0, 10.0), 15.0) == 3  # overrun already: stop after the epochs done
    # the first epoch's one-off costs: the rest is timed by the later epochs ...
    assert fit_epochs(60, 30, h(10.0, 4.0), 205.0) == 49  # 14 s spent, then 191 s at 4 s an epoch
    # ... and an early schedule grows back, up to what was asked
    assert fit_epochs(60, 30, h(10.0, 2.0), 1000.0) == 60
    # past its first tenth a schedule only shortens: its learning rate has moved on
    assert fit_epochs(60, 20, h(10.0, 4.0, 4.0), 1000.0) == 20
    assert fit_epochs(60, 20, h(10.0, 4.0, 4.0, 8.0), 40.0) == 6  # 26 s spent, 14 s left at 5.3 s an epoch


def test_time_budget_fits_the_schedule_and_slim_checkpoints_feed_teachers_and_export(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.training.export import export
    from moodlens.training.train import TrainConfig, load_teacher, slim_checkpoint, train

    data, _ = _fake_pack(tmp_path, 300, 40)
    cfg = TrainConfig(widths=(4, 4, 8, 8), depths=(1, 1, 1), epochs=50, batch=32, device="cpu", bf16=False,
                      time_budget_s=1e-3)
    ckpt = train(data, tmp_path / "run", cfg, log=lambda m: None)
    full = torch.load(ckpt, weights_only=False)
    assert full["epoch"] == 0 and full["config"]["epochs"] == 1  # one epoch measured, then the schedule ends
    assert full["config"]["extra"]["epochs_asked"] == 50
    # resuming with the same command keeps the fitted schedule: nothing left to run
    assert torch.load(train(data, tmp_path / "run", cfg, log=lambda m: None), weights_only=False)["epoch"] == 0

    slim = tmp_path / "slim" / "checkpoint.pt"
    size = slim_checkpoint(ckpt, slim)
    kept = torch.load(slim, weights_only=False)
    assert set(kept) == {"ema", "config", "template", "epoch", "history"} and size < ckpt.stat().st_size
    net, s = load_teacher(str(slim))
    assert s == 48 and not net.training
    card = export(slim.parent, data, log=lambda m: None, precision="float16")
    assert card.is_file() and (slim.parent / "emotion.onnx").is_file()
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a moodlens training checkpoint"):
        slim_checkpoint(tmp_path / "other.pt", tmp_path / "x.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    r = subprocess.run([sys.executable, "-m", "moodlens.cli_train", "slim", str(tmp_path / "text.pt"),
                        str(tmp_path / "x.pt")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "text.pt: not a readable checkpoint" in r.stderr and not (tmp_path / "x.pt").exists()


def test_teacher_file_distils_without_the_teachers_and_is_checked_against_the_data(tmp_path):
    torch = pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    from moodlens.training.export import _training_record
    from moodlens.training.train import TrainConfig, load_teacher_file, save_teacher_file, train

    data, provenance = _fake_pack(tmp_path, 64, 8)
    sha = provenance["sha256"]
    rng = np.random.default_rng(0)
    probs = rng.random((64, 8)).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    good = tmp_path / "teachers_train.npz"
    save_teacher_file(good, probs, sha, ["t1", "t2"])
    np.testing.assert_allclose(load_teacher_file(good, sha, 64), probs)
    with pytest.raises(MoodlensError, match="not on this data"):
        load_teacher_file(good, "f" * 64, 64)
    with pytest.raises(MoodlensError, match="for 63 faces"):
        load_teacher_file(good, sha, 63)
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(MoodlensError, match="not a teachers' probabilities file"):
        load_teacher_file(tmp_path / "junk.npz", sha, 64)

    cfg = TrainConfig(widths=(4, 4, 8, 8), depths=(1, 1, 1), epochs=1, batch=32, device="cpu", bf16=False,
                      teacher_file=str(good))
    logs = []
    ckpt = torch.load(train(data, tmp_path / "run", cfg, log=logs.append), weights_only=False)
    assert any("teachers' probabilities" in m for m in logs)
    record = _training_record(tmp_path / "run" / "checkpoint.pt", ckpt)
    assert record["distilled_from"] == [{"probabilities": str(good), "sha256": ckpt["config"]["teacher_file_sha256"]}]
    other = tmp_path / "other.npz"
    save_teacher_file(other, probs, "0" * 64, [])
    with pytest.raises(MoodlensError, match="not on this data"):
        train(data, tmp_path / "run2", TrainConfig(**{**cfg.__dict__, "teacher_file": str(other)}), log=lambda m: None)
