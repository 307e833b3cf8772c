"""Device placement without a GPU: models built and run forward on fake CUDA tensors.

Every parameter and buffer is created under torch.device("cuda") inside a FakeTensorMode, and a
fake CUDA batch goes through the forward (train mode, a channels_last batch, as the trainer does on a
GPU). A tensor made on the CPU inside a forward (the MSCA bug) then raises a
device-mismatch error here exactly as it would on a real GPU. Backward needs a real CUDA context.
"""

import contextlib

import optuna
import pytest
import torch

from searchspace import build, catalog, space
from studies import config

PROBE_WIDTH = 0.125


@contextlib.contextmanager
def fake_cuda():
    """The one place that uses torch's private FakeTensorMode: tensors with metadata only, whose
    device checks behave like real CUDA ones. Fails loudly if torch moves or renames it."""
    from torch._subclasses.fake_tensor import FakeTensorMode  # private: keep every use here

    with FakeTensorMode(allow_non_fake_inputs=False), torch.device("cuda"):
        yield


def _probe_resolution(genome) -> int:
    return 64 if genome.downsampling == "padding_free" else 32  # unpadded stride-2 convs need the room


def forward_on_fake_cuda(genome, resolution: int | None = None, num_classes: int = 10) -> torch.Tensor:
    r = resolution or _probe_resolution(genome)
    with fake_cuda():
        model = build(genome, num_classes=num_classes, width_mult=PROBE_WIDTH).train()  # weights stay NCHW:
        # fake tensors cannot be swapped by module.to(); the channels_last input exercises the layout paths
        x = torch.randn(2, 3, r, r).contiguous(memory_format=torch.channels_last)
        out = model(x)  # (autocast is not checked: torch turns CUDA autocast off without a device)
    return out


def test_fake_cuda_catches_a_cpu_tensor_in_forward():
    """The probe itself: a forward that makes a CPU tensor fails under it."""

    class Mixed(torch.nn.Module):
        def forward(self, x):
            return x * torch.ones(1, device="cpu").expand(3)[None, :, None, None]

    with pytest.raises(RuntimeError, match="cpu"), fake_cuda():
        Mixed()(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("name", catalog.names())
def test_catalog_models_run_on_fake_cuda(name):
    out = forward_on_fake_cuda(catalog.get(name).genome)
    assert out.device.type == "cuda" and out.shape == (2, 10)


def sampled_genomes(config_name: str, n: int, seed: int = 0):
    spec = config.load(config_name).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask(), spec) for _ in range(n)]


def _check_sample(config_name: str, n: int):
    res = config.load(config_name).fidelity.resolution
    bad = []
    for g in sampled_genomes(config_name, n):
        try:
            out = forward_on_fake_cuda(g, max(res, _probe_resolution(g)))
            assert out.device.type == "cuda"
        except Exception as e:  # collect them all: one failing genome should not hide the others
            bad.append(f"{g.key}: {type(e).__name__}: {str(e)[:200]}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("config_name", config.shipped())
def test_sampled_genomes_run_on_fake_cuda_quick(config_name):
    _check_sample(config_name, 4)


@pytest.mark.slow
@pytest.mark.parametrize("config_name", config.shipped())
def test_fifty_sampled_genomes_per_config_run_on_fake_cuda(config_name):
    _check_sample(config_name, 50)
