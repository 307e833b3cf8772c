"""Batches for the trainer, after airbench's loader: the images stay put, each epoch is drawn at once.

A Loader holds one split's uint8 images (on the device, or in host memory when they would take
too much of it) and its labels (on the device). A training loader draws, at the start of every
epoch and from one seeded torch.Generator, the order of the images and the augmentation
parameters of all of them; a batch is then gather -> crop/flip -> normalise on the device, with no
per-image Python and no host sync. An evaluation loader (shuffle=False) yields every image in order,
unaugmented.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .data import crop_flip, norm_constants, normalize, resized_crop_flip, rrc_params

AUGMENTS = ("crop", "rrc", "none")  # pad + random crop + flip, random-resized crop + flip, nothing


class Loader:
    """Iterating yields (x, y): x float32 [B, 3, R, R] normalised, in `memory_format`; y int64.

    Training (`shuffle=True`, needs `generator`): a new order every epoch and the ragged last batch
    dropped (equal steps, no tiny BatchNorm batches); `len` is the steps per epoch. `crop_pad` is the
    reflect padding of "crop", read through the crop's indices (no padded copy of the images).
    `norm` shares one run's normalisation constants between its loaders (see data.norm_constants).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device,
        *,
        augment: str = "none",
        crop_pad: int = 0,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        on_device: bool = True,
        memory_format: torch.memory_format = torch.contiguous_format,
        norm: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if augment not in AUGMENTS:
            raise ValueError(f"augment: {augment!r} is not one of {AUGMENTS}")
        if shuffle and generator is None:
            raise ValueError(
                "a shuffling loader needs a generator (its seed fixes the order and augmentation)"
            )
        self.device = torch.device(device)
        self.on_device = on_device
        self.images = images.to(self.device if on_device else torch.device("cpu"))
        self.labels = labels.to(self.device)
        self.batch_size = min(batch_size, len(self.labels)) if shuffle else batch_size
        self.augment, self.crop_pad, self.shuffle, self.generator = augment, crop_pad, shuffle, generator
        self.memory_format = memory_format
        self.norm = norm if norm is not None else norm_constants(self.device, torch.float32)
        self.resolution = images.shape[-1]

    def __len__(self) -> int:
        n, bs = len(self.labels), self.batch_size
        return n // bs if self.shuffle else -(-n // bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        if not self.shuffle:
            for i in range(0, len(self.labels), bs):
                yield self._prepare(self._gather(slice(i, i + bs)), ()), self.labels[i : i + bs]
            return
        order_host = torch.randperm(len(self.labels), generator=self.generator)[: len(self) * bs]
        order = order_host.to(self.device)
        params = self._draw()
        for i in range(len(self)):
            idx = order[i * bs : (i + 1) * bs]
            x = self._gather(idx if self.on_device else order_host[i * bs : (i + 1) * bs])
            yield self._prepare(x, [p[idx] for p in params]), self.labels[idx]

    def _draw(self) -> list[torch.Tensor]:
        """This epoch's augmentation parameters of every image, on the device."""
        n, g = len(self.labels), self.generator
        if self.augment == "crop":
            span = 2 * self.crop_pad + 1
            dy, dx = torch.randint(0, span, (n,), generator=g), torch.randint(0, span, (n,), generator=g)
            return [
                dy.to(self.device),
                dx.to(self.device),
                (torch.rand(n, generator=g) < 0.5).to(self.device),
            ]
        if self.augment == "rrc":
            return [rrc_params(n, g).to(self.device)]
        return []

    def _gather(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Images `idx` on the device: indexed there, or gathered in host memory and copied from pinned
        memory without blocking."""
        x = self.images[idx]
        if self.on_device or self.device.type != "cuda":
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def _prepare(self, x: torch.Tensor, params) -> torch.Tensor:
        """uint8 batch -> augmented (with this batch's `params`), normalised float32 in the model's layout."""
        if params and self.augment == "crop":
            x = crop_flip(x, *params, self.resolution, self.crop_pad)
        x = normalize(x, torch.float32, self.norm)
        if params and self.augment == "rrc":
            x = resized_crop_flip(x, *params, self.resolution)
        return x.contiguous(memory_format=self.memory_format)
