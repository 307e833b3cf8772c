"""What a first GPU run depends on, checked on the CPU where possible (CUDA-only checks skip).

Host synchronisation and per-step copies, one copy of the data, memory release and OOM
classification in a reused worker, determinism that says when it was not achieved, compile
warm-up kept out of the throughput, latency on a cast eval copy, target costs counted once.
"""

import json
import pickle
import weakref

import optuna
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from searchspace import Genome, Stage, build, cost
from tests.test_trainers import TINY, _cache, real_tree  # noqa: F401  (fixtures)
from trainers import compiler
from trainers.data import DataSpec, crop_flip, load_data, pad_reflect
from trainers.measure import inference_latency
from trainers.train import Fidelity, data_fits_on_device, is_out_of_memory, train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class CountCalls(TorchFunctionMode):
    """Counts torch functions by name while active (public torch.overrides API)."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


# --- per-step work --------------------------------------------------------------------------------


def test_no_tensor_is_made_from_host_values_per_step(real_tree):
    """torch.tensor(list) (a blocking host-to-device copy on CUDA) is made per run, not per step:
    8 times the steps make the same number of them."""
    data = load_data(DataSpec(root=str(real_tree), max_per_class=64, max_val_per_class=8), 32)
    counts = {}
    for bs in (64, 8):  # 2 and 16 steps
        with CountCalls() as c:
            train(
                nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
                Fidelity(**{**TINY.to_dict(), "batch_size": bs}),
                data,
                device="cpu",
            )
        counts[bs] = c.calls.get("tensor", 0)
    assert counts[64] == counts[8] and counts[8] <= 4


@CUDA
def test_no_host_sync_inside_the_training_steps(real_tree):
    """torch.cuda.set_sync_debug_mode warns on every implicit synchronisation; their number must not
    grow with the number of steps (an epoch has its one loss read, evaluation its own)."""
    data = load_data(DataSpec(root=str(real_tree), max_per_class=64, max_val_per_class=8), 32)
    counts = {}
    for bs in (64, 8):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as rec:
                res = train("resnet18", Fidelity(**{**TINY.to_dict(), "batch_size": bs}), data, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert res.status == "ok"
        counts[bs] = sum("synchroniz" in str(w.message) for w in rec)
    assert counts[64] == counts[8]


@CUDA
def test_a_packed_trial_trains_on_plain_cuda(real_tree):
    """A trial packed on a shared GPU is handed device "cuda" (no index) and a memory fraction: the
    cap needs an indexed device (torch raises on a bare "cuda"), so train() resolves it first. The
    first GPU run failed every trial here."""
    data = load_data(DataSpec(root=str(real_tree), max_per_class=32, max_val_per_class=8), 32)
    try:
        res = train("resnet18", TINY, data, device="cuda", memory_fraction=0.25)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
    assert res.status == "ok" and res.memory_fraction == 0.25
    assert res.device == f"cuda:{torch.cuda.current_device()}"


# --- data: one copy -----------------------------------------------------------------------------


def test_crop_reads_the_reflect_padding_by_index():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=g)
    pad = 3
    dy, dx = (
        torch.randint(0, 2 * pad + 1, (16,), generator=g),
        torch.randint(0, 2 * pad + 1, (16,), generator=g),
    )
    flip = torch.rand(16, generator=g) < 0.5
    assert torch.equal(crop_flip(x, dy, dx, flip, 12, pad), crop_flip(pad_reflect(x, pad), dy, dx, flip, 12))


def test_host_resident_data_trains_the_same(real_tree):
    """Data kept in host memory (copied per batch) gives the run the on-device placement gives."""
    data = load_data(DataSpec(root=str(real_tree), max_per_class=32, max_val_per_class=8), 32)
    a = train("resnet18", TINY, data, device="cpu", data_on_device=True)
    b = train("resnet18", TINY, data, device="cpu", data_on_device=False)
    assert not b.data_on_device and a.loss == b.loss and a.top1 == b.top1


def test_data_placement_threshold():
    gb = 1 << 30
    imagenet_64px = 1_281_167 * 3 * 64 * 64  # ~15.7 GB of uint8
    assert data_fits_on_device(imagenet_64px, 141 * gb)  # alone on an H200
    assert not data_fits_on_device(imagenet_64px, 141 * gb, memory_fraction=0.25)  # four trials on it
    assert data_fits_on_device(500 << 20, 80 * gb, memory_fraction=0.25)  # the bundled sets


# --- out of memory, reused workers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes",
    ],
)
def test_allocation_failures_are_out_of_memory(message):
    assert is_out_of_memory(RuntimeError(message))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        ValueError("out of memory"),
        RuntimeError("CUDA error: device-side assert triggered"),
    ],
)
def test_other_errors_are_not_out_of_memory(error):
    assert not is_out_of_memory(error)


class _AllocFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")


def test_a_worker_trains_the_next_genome_after_an_oom(real_tree):
    """One process, two runs: a cuBLAS allocation failure is status "oom", the run's model is freed
    (nothing keeps it alive), and the next genome trains normally."""
    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    hungry = _AllocFails()
    alive = weakref.ref(hungry)
    res = train(hungry, TINY, data, device="cpu")
    del hungry
    assert res.status == "oom" and res.top1 is None and alive() is None
    nxt = train("se_resnet18", TINY, data, device="cpu")
    assert nxt.status == "ok" and nxt.top1 is not None


def test_an_exception_in_a_run_frees_its_model(real_tree):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            raise ValueError("bug in a module")

    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    net = Broken()
    alive = weakref.ref(net)
    with pytest.raises(ValueError):
        train(net, TINY, data, device="cpu")
    del net
    assert alive() is None


# --- determinism --------------------------------------------------------------------------------


def test_determinism_is_reported_achieved_on_the_cpu(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    res = train("resnet18", TINY, data, device="cpu")
    assert res.deterministic_requested and res.deterministic and res.nondeterministic_ops == []


def test_a_nondeterministic_op_is_reported(real_tree):
    """put_ has no deterministic kernel (also on the CPU): torch's own alert reaches the result."""

    class Scatter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            v = self.fc(x.mean((2, 3)))
            return v + torch.zeros_like(v).put_(torch.tensor([0, 0], device=v.device), v[0, :2].detach())

    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    res = train(Scatter(), TINY, data, device="cpu")
    assert res.status == "ok" and res.deterministic_requested and res.deterministic is False
    assert res.nondeterministic_ops == ["put_"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


# --- compile, warm-up, latency --------------------------------------------------------------------


def test_warmup_step_is_kept_out_of_the_throughput(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=40, max_val_per_class=8), 32)
    fid = Fidelity(**{**TINY.to_dict(), "epochs": 2, "batch_size": 16})
    res = train("resnet18", fid, data, device="cpu")
    steps = (40 + 40 + 10) // 16
    assert res.warmup_s > 0 and res.images_per_s * res.train_s == pytest.approx((2 * steps - 1) * 16)


def test_compile_adapter_counts_graphs_and_resets():
    """The private counter trainers.compiler reads: fails here first if torch moves it."""
    before = compiler.graphs_compiled()
    net = compiler.compile_for_training(nn.Linear(4, 4), backend="eager")
    net(torch.randn(2, 4))
    assert compiler.graphs_compiled() == before + 1
    compiler.reset()
    net(torch.randn(2, 4))  # compiled again after the reset
    assert compiler.graphs_compiled() == before + 2


@pytest.mark.slow
def test_compiled_run_records_its_graphs(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    res = train(net, Fidelity(**{**TINY.to_dict(), "compile": True, "batch_size": 8}), data, device="cpu")
    assert res.status == "ok" and res.compiled_graphs >= 1 and res.warmup_s > 0


def test_latency_times_a_cast_eval_copy():
    model = build(Genome("resnet18"), num_classes=2, width_mult=0.125)
    ms = inference_latency(model, 32, (1, 2), device="cpu", warmup=1, repeats=2, dtype=torch.bfloat16)
    assert set(ms) == {1, 2} and all(v > 0 for v in ms.values())
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())


def test_run_measures_latency_on_the_trained_model(real_tree):
    data = load_data(DataSpec(root=str(real_tree), max_per_class=16, max_val_per_class=8), 32)
    assert train("resnet18", TINY, data, device="cpu", measure_latency=True).latency_ms > 0


# --- KernelWarehouse layout ---------------------------------------------------------------------


def test_kw_conv_keeps_the_input_layout_and_values():
    torch.manual_seed(0)
    model = build(
        Genome("resnet18", tuple(Stage(kw=1.0) for _ in range(4))), num_classes=3, width_mult=0.25
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    conv = model.stages[1].blocks[1].conv1
    h = torch.randn(2, conv.in_channels, 8, 8)
    y = conv(h)
    y_cl = conv(h.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
    torch.testing.assert_close(y_cl, y)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


# --- target costs in the driver ---------------------------------------------------------------------


def test_target_cost_is_counted_once_and_cached_on_disk(tmp_path, monkeypatch):
    from studies import costs
    from studies.search import GenomeSpace

    monkeypatch.setenv("PLUGIN_EXPLORER_COST_CACHE", str(tmp_path / "costs"))
    target = {"backbone": "resnet18", "convention": "paper", "resolution": 224, "num_classes": 1000}
    g = Genome("resnet18")
    c = costs.target_cost(g, target)
    want = cost(g, "paper", 224, 1000)
    assert c == {"flops": want.flops, "params": want.params, "activations": want.activations}
    files = list((tmp_path / "costs").rglob("*"))
    json_files = [f for f in files if f.suffix == ".json"]
    assert len(json_files) == 1 and not [f for f in files if f.name.startswith(".cost-")]
    # another process reads the file: prove it by making the stored value the only possible source
    rec = json.loads(json_files[0].read_text())
    json_files[0].write_text(json.dumps({**rec, "flops": 123}))
    assert costs.target_cost(g, target)["flops"] == 123
    json_files[0].write_text("{broken")  # unreadable: counted again
    assert costs.target_cost(g, target)["flops"] == want.flops

    from studies import config as config_mod

    cfg = config_mod.load("smoke")
    space = GenomeSpace(cfg.space, target=cfg.protocol["target"])
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    out = pickle.loads(pickle.dumps(space))(trial)  # Ray pickles the searcher with its space
    got = Genome.from_json(out["genome"])
    assert out["cost"]["flops"] == cost(got, "paper", 224, 1000).flops


def test_kw_networks_train_in_nchw_on_cuda():
    from trainers.measure import memory_format_for

    kw = build(
        Genome("resnet18", (Stage(kw=1.0), Stage(), Stage(), Stage())), num_classes=3, width_mult=0.125
    )
    plain = build(Genome("resnet18"), num_classes=3, width_mult=0.125)
    assert memory_format_for(plain, "cuda") == torch.channels_last
    assert memory_format_for(kw, "cuda") == torch.contiguous_format
    assert memory_format_for(plain, "cpu") == torch.contiguous_format
