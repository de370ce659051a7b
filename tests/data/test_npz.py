"""A user's own data, ``data.dataset = "npz:PATH"``: each malformed file refused in one line naming the file
and the array; the pipelines and the natural partition; a run whose folder records the file's absolute path and
SHA-256, and whose resume refuses a changed file; plot, compare and a sweep on it."""

import hashlib
import json
import re

import numpy as np
import pytest

from fedsim.cli import main
from fedsim.config import ConfigError, load_preset
from fedsim.data.load import load_dataset
from fedsim.data.npz import read_npz
from fedsim.experiment_data import split_among_clients
from tests.data.conftest import one_line_error

TINY_NPZ = ["--set", "federated.n_clients=4", "--set", "federated.rounds=3", "--set", "federated.batch_size=10"]


def arrays(n_train=80, n_test=20, features=6, classes=3, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, features)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((features, classes)), axis=1)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:],
            "client_ids": np.repeat([7, 3, 5, 9], n_train // 4)}


def saved(tmp_path, name="mine.npz", **changes):
    contents = {key: value for key, value in {**arrays(), **changes}.items() if value is not None}
    np.savez(tmp_path / name, **contents)
    return tmp_path / name


@pytest.mark.parametrize("changes, fragment", [
    ({"y_test": None}, "has no array y_test; it needs x_train, y_train, x_test, y_test"),
    ({"x_train": np.zeros((80, 2, 3))}, "x_train must be (samples, features) numbers or (samples, height, width) "
                                        "uint8 images; got float64 of shape (80, 2, 3)"),
    ({"x_test": np.full((20, 6), np.nan)}, "x_test must be finite; row 0 holds NaN or inf"),
    ({"y_train": np.full(80, 0.5)}, "y_train must hold whole numbers >= 0; y_train[0] is 0.5"),
    ({"y_train": -np.ones(80, int)}, "y_train must hold whole numbers >= 0; y_train[0] is -1"),
    ({"y_train": np.zeros((80, 1), int)}, "y_train must be a 1-D array of whole numbers; got int64 of shape (80, 1)"),
    ({"y_train": np.zeros(79, int)}, "x_train has 80 samples, y_train 79; they must be equal"),
    ({"x_test": np.zeros((20, 5))}, "x_train has samples of shape (6,), x_test of shape (5,); they must be the same"),
    ({"client_ids": np.zeros(3, int)}, "client_ids has 3 entries, x_train 80 samples; they must be equal"),
    ({"y_train": np.zeros(80, int), "y_test": np.zeros(20, int)}, "must name at least 2 classes"),
    ({"y_test": np.r_[np.zeros(5, int), 10**9, np.zeros(14, int)]}, "the labels must name at most 65,536 classes "
                                                                     "(0 .. 65535); y_test[5] is 1000000000"),
    ({"client_ids": np.full(80, 0.5)}, "client_ids must hold whole numbers; client_ids[0] is 0.5"),
    ({"x_train": np.zeros((80, 0)), "x_test": np.zeros((20, 0))}, "x_train has samples of shape (0,), holding no "
                                                                  "feature; a sample needs at least one"),
    ({"x_train": np.zeros((80, 0, 5), np.uint8)}, "x_train has samples of shape (0, 5), holding no pixel"),
    # labels and ids beyond int64: the element named, the reason said, no warning of a cast
    ({"y_train": np.r_[np.zeros(3, int), 2**63 - 1, np.ones(76, int)]}, "the labels must name at most 65,536 "
                                                                         "classes (0 .. 65535); y_train[3] is 9223"),
    ({"y_train": np.r_[np.zeros(3, np.uint64), 2**64 - 1, np.ones(76, np.uint64)]},
     "y_train must hold whole numbers >= 0; y_train[3] is 18446744073709551615, too large for int64"),
    ({"y_train": np.r_[np.zeros(3), 1e300, np.ones(76)]}, "y_train[3] is 1e+300, too large for int64"),
    ({"y_train": np.r_[np.zeros(3), 2.0**63, np.ones(76)]}, "y_train[3] is 9.223372036854776e+18, too large"),
    ({"y_train": np.r_[np.zeros(3), np.nan, np.ones(76)]}, "y_train must hold whole numbers >= 0; y_train[3] is nan"),
    ({"client_ids": np.full(80, -1e300)}, "client_ids must hold whole numbers; client_ids[0] is -1e+300, too small "
                                          "for int64"),
])
def test_a_malformed_file_is_refused_in_one_line_naming_file_and_array(tmp_path, changes, fragment, recwarn):
    path = saved(tmp_path, **changes)
    one_line_error(lambda: read_npz(path), fragment, f"npz:{path}")
    assert not recwarn.list


def test_a_missing_or_foreign_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "foreign.npz").write_text("not a zip")
    np.savez(tmp_path / "objects.npz", x_train=np.array([{}], dtype=object))
    for name, fragment in (("absent.npz", "no such file"), ("foreign.npz", "not an .npz file (numpy.savez writes"),
                           ("objects.npz", "not a readable .npz file of plain arrays")):
        one_line_error(lambda: read_npz(tmp_path / name), f"npz:{tmp_path / name}: {fragment}")


def test_features_beyond_the_pipelines_float_range_are_refused_naming_the_entry(tmp_path, recwarn):
    x = arrays()["x_train"].astype(np.float64)
    x[3, 2] = 1e300
    path = saved(tmp_path, x_train=x)
    one_line_error(lambda: load_dataset(f"npz:{path}", "stc"), f"npz:{path}: x_train[3, 2] is 1e+300, beyond the "
                   "range of float32, the dtype of the stc pipeline (magnitudes up to 3.403e+38)")
    assert not recwarn.list             # no overflow warning of the cast
    assert load_dataset(f"npz:{path}", "laq").x_train[3, 2] == 1e300       # float64 holds it


def test_images_of_one_shade_cannot_be_normalized_by_the_stc_pipeline(tmp_path):
    images = np.full((100, 8, 8), 7, np.uint8)
    path = saved(tmp_path, x_train=images[:80], x_test=images[80:])
    one_line_error(lambda: load_dataset(f"npz:{path}", "stc"), f"npz:{path}: x_train's images are all one shade",
                   'set data.pipeline = "laq"')
    assert load_dataset(f"npz:{path}", "laq").x_train.max() == 7 / 255


def test_features_are_used_as_they_are_and_images_go_through_the_pipeline(tmp_path):
    own = arrays()
    data = load_dataset(f"npz:{saved(tmp_path)}", "laq")
    assert data.x_train.dtype == np.float64 and np.array_equal(data.x_train, own["x_train"].astype(np.float64))
    assert data.n_classes == 1 + max(own["y_train"].max(), own["y_test"].max())
    images = np.random.default_rng(1).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    path = saved(tmp_path, "images.npz", x_train=images[:80], x_test=images[80:])
    assert np.array_equal(load_dataset(f"npz:{path}", "laq").x_test, images[80:].reshape(20, 784) / 255.0)
    stc = load_dataset(f"npz:{path}", "stc")
    assert stc.x_train.shape == (80, 1024) and stc.x_train.dtype == np.float32
    assert abs(float(stc.x_train.mean())) < 1e-4 and abs(float(stc.x_train.std()) - 1) < 1e-3  # own statistics


def test_client_ids_are_the_natural_partition(tmp_path):
    path = saved(tmp_path)
    config = load_preset("synthetic", [f"data.dataset=npz:{path}", "federated.n_clients=4"])
    clients = split_among_clients(config.data, load_dataset(config.data.dataset), 4, seed=0)
    ids = arrays()["client_ids"]
    assert [ix.tolist() for ix in clients] == [np.flatnonzero(ids == k).tolist() for k in (3, 5, 7, 9)]
    with pytest.raises(ValueError, match=r"has 4 devices \(distinct client_ids\), but federated.n_clients is 5"):
        split_among_clients(config.data, load_dataset(config.data.dataset), 5, seed=0,
                            clients_setting="federated.n_clients")
    with pytest.raises(ConfigError, match="data.train_split must be 'train' with npz data"):
        load_preset("synthetic", [f"data.dataset=npz:{path}", "data.train_split=test"])


@pytest.mark.parametrize("overrides, message", [
    (["data.classes_per_client=7"], r"^data.classes_per_client must be an integer in \[1, 3\], got 7$"),
    (['data.partition="shards"', "data.shards_per_client=30"], r"^data.shards_per_client must be an integer in "
                                                                r"\[1, 10\], got 30$"),
    (['data.partition="dirichlet"', "data.dirichlet_alpha=1e-3"], r"^dirichlet: in 100 draws, none gave every client "
     r"at least 1 samples \(data.dirichlet_alpha = 0.001, federated.n_clients = 8; .*\); raise data.dirichlet_alpha, "
     r"or lower federated.n_clients$"),
])
def test_a_partition_the_data_cannot_make_names_the_settings_as_written(tmp_path, overrides, message):
    config = load_preset("synthetic", [f"data.dataset=npz:{saved(tmp_path)}", 'data.partition="classes_per_client"',
                                       "federated.n_clients=8", *overrides])
    with pytest.raises(ValueError, match=message):
        split_among_clients(config.data, load_dataset(config.data.dataset), 8, seed=0,
                            clients_setting="federated.n_clients")


def npz_sweep(tmp_path, settings: str, grid: str) -> None:
    """own.toml: a sweep of the synthetic preset on mine.npz among 4 clients, with these [set] lines and grid."""
    (tmp_path / "own.toml").write_text(f'base = "synthetic"\nname = "own"\n[set]\n"data.dataset" = "npz:mine.npz"\n'
                                       f'"federated.n_clients" = 4\n{settings}\n[grid]\n{grid}\n')


def test_a_sweep_runs_on_npz_data_and_refuses_a_partition_it_cannot_make_before_any_run(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    saved(tmp_path)
    npz_sweep(tmp_path, '"data.partition" = "classes_per_client"', '"data.classes_per_client" = [2, 7]')
    assert main(["sweep", "own.toml", "--workers", "1", "--quiet"]) == 2
    assert capsys.readouterr().err == ("fedsim: error: own.toml: the run with data.classes_per_client = 7: the config "
                                       "does not fit the data: data.classes_per_client must be an integer in [1, 3], "
                                       "got 7\n")
    npz_sweep(tmp_path, '"data.partition" = "classes_per_client"\n"data.classes_per_client" = 7', "")   # one run
    assert main(["sweep", "own.toml", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("fedsim: error: own.toml: the config does not fit the data: ")
    assert not (tmp_path / "runs").exists()
    npz_sweep(tmp_path, '"federated.rounds" = 2\n"federated.batch_size" = 10', "seed = [0, 1]")
    assert main(["sweep", "own.toml", "--workers", "1", "--quiet"]) == 0
    assert "2 completed" in capsys.readouterr().out


def test_a_run_records_the_file_and_its_resume_refuses_a_changed_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = saved(tmp_path)
    assert main(["run", "--preset", "synthetic", "--set", "data.dataset=npz:mine.npz", *TINY_NPZ,
                 "--out", "one", "--quiet"]) == 0
    assert main(["run", "--preset", "synthetic", "--set", "data.dataset=npz:mine.npz", "--set",
                 "data.partition=iid", *TINY_NPZ, "--out", "two", "--quiet"]) == 0
    meta = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert meta["data_file"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert f'dataset = "npz:{path}"' in (tmp_path / "one" / "config.toml").read_text()   # absolute
    assert main(["compare", "one", "two"]) == 0 and main(["plot", "one", "two", "--out", "figures"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", "one", "--extend-to", "4", "--quiet"]) == 0
    saved(tmp_path, y_test=np.zeros(20, int))
    assert main(["run", "--resume", "one", "--extend-to", "5", "--quiet"]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]   # (a BLAS warning may come)
    assert error.startswith("fedsim: error: data.dataset npz:") and "the file changed since the run started" in error
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["completed"] == 4


def test_meta_json_records_the_hash_of_the_bytes_the_build_read(tmp_path, monkeypatch, capsys):
    """The file is hashed before the build and the build's reads are compared with that hash: a file changed
    before the run reads it is refused, also when it is changed back before the build ends; a file changed
    after the run read it is recorded with the hash of what the run read."""
    import fedsim.data.npz as npz
    monkeypatch.chdir(tmp_path)
    original = saved(tmp_path).read_bytes()
    read_hashed, changed = npz.read_hashed, np.full(20, 1)

    def read_changed_then_restore(path):       # another process rewrites the file, and then puts it back
        saved(tmp_path, y_test=changed)
        try:
            return read_hashed(path)
        finally:
            (tmp_path / "mine.npz").write_bytes(original)

    def read_then_change(path):
        try:
            return read_hashed(path)
        finally:
            saved(tmp_path, y_test=changed)

    run = ["run", "--preset", "synthetic", "--set", "data.dataset=npz:mine.npz", *TINY_NPZ, "--quiet", "--out"]
    with monkeypatch.context() as patch:
        patch.setattr(npz, "read_hashed", read_changed_then_restore)
        assert main([*run, "one"]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert re.fullmatch(r"fedsim: error: data.dataset npz:\S+: the file changed while the run was being built "
                        r"\(sha256 \w{16}\.\.\. when the build began, read \w{16}\.\.\.\); start the run again "
                        r"once the file stays as it is", error), error
    assert not (tmp_path / "one").exists() and (tmp_path / "mine.npz").read_bytes() == original
    with monkeypatch.context() as patch:
        patch.setattr(npz, "read_hashed", read_then_change)
        assert main([*run, "two"]) == 0
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["data_file"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert (tmp_path / "mine.npz").read_bytes() != original
    # a resume checks the file before its build and the bytes its build read; refused, it leaves the folder
    (tmp_path / "mine.npz").write_bytes(original)
    files = {name: (tmp_path / "two" / name).read_bytes() for name in ("history.jsonl", "config.toml", "meta.json",
                                                                         "summary.json")}
    monkeypatch.setattr(npz, "read_hashed", read_changed_then_restore)
    assert main(["run", "--resume", "two", "--extend-to", "4", "--quiet"]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert re.search(r"the file changed since the run started \(sha256 \w{16}\.\.\. in meta.json, read \w{16}\.\.\.\); "
                     r"put the run's file back", error), error
    assert {name: (tmp_path / "two" / name).read_bytes() for name in files} == files


def test_a_sweep_worker_keeps_a_dataset_in_memory_only_under_the_hash_of_the_bytes_it_read(tmp_path, monkeypatch):
    import fedsim.data.npz as npz
    from fedsim import experiment_data
    monkeypatch.chdir(tmp_path)
    original = saved(tmp_path).read_bytes()
    read_hashed, changed = npz.read_hashed, np.full(20, 2)

    def read_changed_then_restore(path):
        saved(tmp_path, y_test=changed)
        try:
            return read_hashed(path)
        finally:
            (tmp_path / "mine.npz").write_bytes(original)

    config = load_preset("synthetic", ["data.dataset=npz:mine.npz"]).data
    monkeypatch.setattr(experiment_data, "_MEMORY", {})
    with monkeypatch.context() as patch:
        patch.setattr(npz, "read_hashed", read_changed_then_restore)
        assert np.array_equal(experiment_data.load_data(config, "stc", 0).y_test, changed)
    assert np.array_equal(experiment_data.load_data(config, "stc", 0).y_test, arrays()["y_test"])
    assert len(experiment_data._MEMORY) == 1


def test_a_file_replaced_with_its_size_and_mtime_kept_is_hashed_again(tmp_path):
    """file_sha256 computes once per unchanged file: a copy that kept the size and mtime (``cp -p``) is not
    unchanged (another inode, another change time)."""
    import os
    from fedsim.data.npz import file_sha256
    path = saved(tmp_path)
    before, status = file_sha256(path), os.stat(path)
    other = saved(tmp_path, name="other.npz", y_test=np.full(20, 2))
    assert other.stat().st_size == status.st_size
    os.replace(other, path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != before
