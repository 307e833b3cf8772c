"""Proxy training of genomes on real images, and measured throughput / latency. Knows nothing of Ray.

    from trainers.data import DataSpec, load_data
    from trainers.train import Fidelity, train
    data = load_data(DataSpec(num_classes=10), resolution=32)    # bundled Imagenette-64 by default
    result = train("se_resnet50", Fidelity(epochs=5), data)      # -> TrainResult(status, top1, ...)

Import from the submodules (data, loader, train, measure): the package imports nothing itself, so that
`python -m trainers.train` runs cleanly. The bundled data (trainers/data/, see SOURCES.md there)
comes from ImageNet: ImageNet's terms of access apply (non-commercial research and education).
"""
