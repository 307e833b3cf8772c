"""Trainers: data loading on real JPEGs, bad data, a short real training run, determinism, CLI."""

import gc
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from searchspace import Genome, catalog
from searchspace.errors import UserError
from trainers import data as tdata
from trainers.data import BUNDLED, DataSpec, crop_flip, load_data, normalize, pad_reflect
from trainers.loader import Loader
from trainers.measure import Timer, inference_latency, time_call, train_throughput
from trainers.train import Fidelity, train

ROOT = Path(__file__).resolve().parents[1]
TWO = ["n03445777", "n03888257"]  # golf ball, parachute: separable at low resolution
TINY = Fidelity(epochs=1, resolution=32, width=0.125, batch_size=32, warmup_epochs=0.5)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and an empty in-process cache."""
    monkeypatch.setenv("PLUGIN_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tdata, "_MEMO", {})


@pytest.fixture(scope="session")
def real_tree(tmp_path_factory) -> Path:
    """A small ImageFolder tree of real JPEGs cut from the bundled tarball: 3 classes, 120 train and
    50 val images of each of TWO, 10 + 10 of a third class."""
    root = tmp_path_factory.mktemp("tree")
    want = {
        ("train", TWO[0]): 120,
        ("train", TWO[1]): 120,
        ("val", TWO[0]): 50,
        ("val", TWO[1]): 50,
        ("train", "n01440764"): 10,
        ("val", "n01440764"): 10,
    }
    with tarfile.open(BUNDLED) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and want.get((parts[1], parts[2]), 0) > 0:
                want[parts[1], parts[2]] -= 1
                dest = root / parts[1] / parts[2] / parts[3]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
    assert not any(want.values())
    return root


def _copy(tree: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tree, dst)
    return dst


# --- data ---------------------------------------------------------------------------------------


def test_imagefolder_tree_classes_cap_and_resize(real_tree, tmp_path):
    d = load_data(DataSpec(root=str(real_tree)), 32)
    assert d.classes == sorted(["n01440764", *TWO]) and d.skipped == []
    assert d.train_x.shape == (250, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.val_x.shape == (110, 3, 32, 32) and d.val_y.tolist().count(0) == 10
    assert load_data(DataSpec(root=str(real_tree)), 32) is d  # decoded once per process
    (tmp_path / "classes.txt").write_text(f"# two classes\n{TWO[1]}\n{TWO[0]}  golf ball\n")
    s = load_data(
        DataSpec(root=str(real_tree), classes_file=str(tmp_path / "classes.txt"), max_per_class=7), 16
    )
    assert s.classes == [TWO[1], TWO[0]] and s.train_x.shape == (14, 3, 16, 16) and len(s.val_y) == 100
    assert load_data(DataSpec(root=str(real_tree), num_classes=1), 64).classes == ["n01440764"]


def test_disk_cache_round_trip(real_tree, monkeypatch):
    monkeypatch.setattr(tdata, "DISK_CACHE_MIN_BYTES", 0)
    a = load_data(DataSpec(root=str(real_tree), num_classes=1), 32)
    monkeypatch.setattr(tdata, "_MEMO", {})
    monkeypatch.setattr(
        tdata, "_decode", lambda *a: pytest.fail("decoded again instead of reading the cache")
    )
    b = load_data(DataSpec(root=str(real_tree), num_classes=1), 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y) and a.classes == b.classes


def test_bundled_tarball_checksum_and_class_list():
    import hashlib

    assert (
        hashlib.sha256(BUNDLED.read_bytes()).hexdigest()
        == (ROOT / "trainers/data/imagenette-64.tar.gz.sha256").read_text().split()[0]
    )
    listed = [
        line.split()[0]
        for line in (ROOT / "trainers/data/imagenette-64.classes.txt").read_text().splitlines()
    ]
    assert len(listed) == 10 and {TWO[0], TWO[1], "n01440764"} <= set(listed)


def test_bundled_default_extracts_once_and_checks_sha(real_tree, tmp_path, monkeypatch):
    """The extraction mechanism on a small tarball of the same layout (the real one takes ~10 s)."""
    import hashlib

    tgz = tmp_path / "imagenette-64.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(real_tree, arcname="imagenette-64")
    (tmp_path / "imagenette-64.tar.gz.sha256").write_text(
        hashlib.sha256(tgz.read_bytes()).hexdigest() + "  x\n"
    )
    monkeypatch.setattr(tdata, "BUNDLED", tgz)
    d = load_data(None, 32)
    assert len(d.classes) == 3 and len(d.train_y) == 250
    root = tdata.bundled_root()
    assert root.name == "imagenette-64" and tdata.bundled_root() == root
    assert [p.name for p in root.parents[1].iterdir() if p.name.startswith(".")] == []  # no temp folder left
    shutil.rmtree(root.parent)
    tgz.write_bytes(tgz.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UserError, match="sha256"):
        tdata.bundled_root()


def test_bad_data_is_a_user_error(real_tree, tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_data(DataSpec(root=str(tmp_path / "nope")), 32)
    tree = _copy(real_tree, tmp_path)
    with pytest.raises(UserError, match="num_classes=9"):
        load_data(DataSpec(root=str(tree), num_classes=9), 32)
    (tmp_path / "bad.txt").write_text("n99999999\n")
    with pytest.raises(UserError, match="not in"):
        load_data(DataSpec(root=str(tree), classes_file=str(tmp_path / "bad.txt")), 32)
    (tree / "train" / "n09999999").mkdir()
    with pytest.raises(UserError, match="empty class folder"):
        load_data(DataSpec(root=str(tree)), 32)
    shutil.copy(next((tree / "train" / TWO[0]).iterdir()), tree / "train" / "n09999999")
    with pytest.raises(UserError, match="missing"):  # a train class without a val folder
        load_data(DataSpec(root=str(tree)), 32)
    (tree / "val" / "n09999999").mkdir()
    with pytest.raises(UserError, match="empty class folder"):
        load_data(DataSpec(root=str(tree)), 32)
    shutil.rmtree(tree / "val")
    with pytest.raises(UserError, match="no val/"):
        load_data(DataSpec(root=str(tree)), 32)


def test_non_image_and_corrupt_files_are_skipped_and_counted(real_tree, tmp_path, caplog):
    tree = _copy(real_tree, tmp_path)
    cls = tree / "train" / TWO[0]
    good = sorted(cls.iterdir())[0].read_bytes()
    (cls / "notes.txt").write_text("not an image")
    (cls / "fake.JPEG").write_text("not a jpeg either")
    (cls / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    d = load_data(DataSpec(root=str(tree)), 32)
    assert sorted(Path(p).name for p, _ in d.skipped) == ["fake.JPEG", "notes.txt", "truncated.JPEG"]
    assert len(d.train_y) == 250 and "skipped 3 files" in caplog.text
    for f in (tree / "val" / "n01440764").iterdir():  # a class with nothing readable left
        f.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(UserError, match="no readable image"):
        load_data(DataSpec(root=str(tree)), 32)


def test_crop_flip_is_a_crop_and_a_flip():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    xp, off = pad_reflect(x, 2), torch.full((4,), 2)
    assert torch.equal(crop_flip(xp, off, off, torch.zeros(4, dtype=torch.bool), 8), x)
    assert torch.equal(crop_flip(xp, off, off, torch.ones(4, dtype=torch.bool), 8), x.flip(3))
    assert torch.equal(
        crop_flip(xp, off * 0, off, torch.zeros(4, dtype=torch.bool), 8)[:, :, 2:], x[:, :, :6]
    )


def _epochs(loader, n=2):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(n)]


@pytest.mark.parametrize("augment", ["crop", "rrc", "none"])
def test_training_loader_is_seeded_drops_the_ragged_batch_and_reshuffles(augment):
    x = torch.randint(0, 256, (22, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(22)

    def loader(seed):
        return Loader(
            x,
            y,
            8,
            "cpu",
            augment=augment,
            crop_pad=1,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b = _epochs(loader(0)), _epochs(loader(0))
    assert len(loader(0)) == 2 and [len(e) for e in a] == [2, 2]
    for ea, eb in zip(a, b):  # the same seed: the same order and augmentation
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(ea, eb))
    labels = [torch.cat([yb for _, yb in e]) for e in a]
    assert all(len(set(lab.tolist())) == 16 for lab in labels)  # 16 distinct images, 6 left out
    assert not torch.equal(labels[0], labels[1])  # a new order every epoch
    assert all(xb.shape == (8, 3, 8, 8) and xb.dtype == torch.float32 for e in a for xb, _ in e)
    assert not torch.equal(a[0][0][0], _epochs(loader(1), 1)[0][0][0])


def test_evaluation_loader_yields_every_image_in_order_unaugmented():
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    batches = list(Loader(x, torch.arange(10), 4, "cpu"))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([yb for _, yb in batches]), torch.arange(10))
    assert torch.equal(torch.cat([xb for xb, _ in batches]), normalize(x, torch.float32))


def test_timer_reads_wall_and_cpu_clocks():
    with Timer() as t:
        time.sleep(0.02)
    assert t.wall_s >= 0.02 and t.cpu_s < t.wall_s  # asleep: wall time passes, this process does no work
    assert time_call(lambda: time.sleep(0.01)) >= 0.01


# --- training -----------------------------------------------------------------------------------


def test_short_run_learns_above_chance(real_tree, tmp_path):
    (tmp_path / "two.txt").write_text("\n".join(TWO))
    two = load_data(DataSpec(root=str(real_tree), classes_file=str(tmp_path / "two.txt")), 32)
    seen = []
    res = train(
        Genome(backbone="resnet18"),
        Fidelity(**{**TINY.to_dict(), "epochs": 4, "lr": 0.05, "batch_size": 16}),
        two,
        device="cpu",
        report=lambda e, m: seen.append(e),
    )
    assert res.status == "ok" and res.epochs == 4 and seen == [1, 2, 3, 4]
    assert res.top1 > 0.65, res.history  # chance: 0.5 +- 0.05 on 100 val images; seeds 0-3 give 0.77-0.85
    assert res.top5 == 1.0 and res.images_per_s > 0 and res.device == "cpu" and res.num_classes == 2
    json.dumps(res.to_dict())


def test_same_seed_same_result_and_stop(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=40), 32)
    fid = Fidelity(**{**TINY.to_dict(), "epochs": 3})
    a = train("resnet18", fid, data, device="cpu", seed=3, report=lambda e, m: e < 1)
    b = train("resnet18", fid, data, device="cpu", seed=3, report=lambda e, m: e < 1)
    assert a.status == "stopped" and a.epochs == 1
    assert (a.top1, a.top5, a.loss, a.val_loss) == (b.top1, b.top5, b.loss, b.val_loss)
    c = train("resnet18", Fidelity(**{**TINY.to_dict(), "augment": "rrc"}), data, device="cpu", seed=4)
    assert c.status == "ok" and c.loss != a.loss


def test_evaluate_only_after_the_last_epoch(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=40), 32)
    seen = []
    res = train(
        "resnet18",
        Fidelity(**{**TINY.to_dict(), "epochs": 2}),
        data,
        device="cpu",
        report=lambda e, m: seen.append(m),
        evaluate_every_epoch=False,
    )
    assert res.status == "ok" and res.top1 is not None
    assert "top1" not in seen[0] and "top1" in seen[1]  # the val split is read once, at the end


def test_absurd_learning_rate_diverges(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=40), 32)
    res = train(
        "resnet18",
        Fidelity(**{**TINY.to_dict(), "epochs": 2, "lr": 1e12, "warmup_epochs": 0}),
        data,
        device="cpu",
    )
    assert res.status == "diverged" and res.top1 is None and res.loss is None and res.epochs == 1
    json.dumps(res.to_dict(), allow_nan=False)


def test_a_cpu_run_leaves_no_cycles_behind(real_tree):
    """release_memory skips gc.collect() on CPU (most of a short trial's overhead): that is safe only
    while a finished run's model, optimizer and tensors are freed by reference counts alone."""
    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    for design in ("se_resnet18", "msaf_resnet18_r4", "kw_resnet18_1x"):
        genome = catalog.get(design).genome
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            train(genome, TINY, data, device="cpu", measure_latency=True)
            gc.collect()
            left = [o for o in gc.garbage if isinstance(o, (torch.nn.Module, torch.Tensor))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert not left, f"{design}: {len(left)} modules/tensors freed only by the garbage collector"


def test_out_of_memory_is_a_status(real_tree):
    class Hungry(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    data = load_data(DataSpec(root=str(real_tree), max_per_class=8), 32)
    res = train(Hungry(), TINY, data, device="cpu")
    assert res.status == "oom" and res.top1 is None and res.epochs == 0


def test_fidelity_json_round_trip_and_bad_values():
    f = Fidelity(epochs=3, optimizer="adamw")
    assert Fidelity.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    with pytest.raises(UserError, match="unknown keys"):
        Fidelity.from_dict({"epoch": 3})
    with pytest.raises(UserError, match="optimizer"):
        Fidelity(optimizer="lion")


def test_measure_smoke():
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    lat = inference_latency(net, 16, (1, 4), device="cpu", warmup=1, repeats=3)
    assert set(lat) == {1, 4} and all(v > 0 for v in lat.values())
    assert train_throughput(net, 8, 16, device="cpu", steps=2, warmup=1, repeats=2) > 0


# --- command line -------------------------------------------------------------------------------


def _cli(*args, capsys):
    """The entry point in-process (a fresh interpreter costs seconds): exit status, stdout, stderr."""
    from searchspace.cli import cli_main
    from trainers.train import main

    with pytest.raises(SystemExit) as e:
        cli_main(lambda: main(list(args)))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize(
    "args",
    [
        ["{not json"],
        ["resnet18", "--data-root", "/nonexistent"],
        ["resnet18", "--epochs", "0"],
        ["resnet18", "--device", "tpu"],
        ["resnet18", "--width", "-1"],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, capsys):
    code, out, err = _cli(*args, capsys=capsys)
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_cli_as_a_module_exits_2_on_an_unknown_design(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "PLUGIN_EXPLORER_CACHE": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    r = subprocess.run(
        [sys.executable, "-m", "trainers.train", "no_such_design"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_json(real_tree, tmp_path, capsys):
    (tmp_path / "g.json").write_text(Genome(backbone="resnet18").to_json())
    code, out, err = _cli(
        str(tmp_path / "g.json"),
        "--epochs",
        "1",
        "--resolution",
        "32",
        "--width",
        "0.125",
        "--data-root",
        str(real_tree),
        "--num-classes",
        "2",
        "--device",
        "cpu",
        "--json",
        capsys=capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "ok" and res["epochs"] == 1 and 0 <= res["top1"] <= 1 and res["images_per_s"] > 0
