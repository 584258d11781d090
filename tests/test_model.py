import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.model import MODELS, SeededDropout, SimpleCNN, UpgradedCNN, attach_dropout_generator, build_model
from ratio_cnn.strategies import make_plan
from ratio_cnn.train import build_replicate, normalise, train_one_epoch


def test_layers_and_shapes_are_the_studys():
    model = SimpleCNN()
    conv, bn, _, pool = model.features
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (3, 32, (3, 3), (1, 1), (1, 1))
    assert bn.num_features == 32 and pool.kernel_size == 2 and pool.stride == 2
    _, fc1, _, fc2 = model.classifier
    assert (fc1.in_features, fc1.out_features, fc2.in_features, fc2.out_features) == (131072, 256, 256, 1)
    assert model(torch.zeros(2, 3, 128, 128)).shape == (2,)


def test_parameter_count():
    # conv 3*32*9+32, batchnorm 2*32, fc1 131072*256+256, fc2 256+1
    expected = 896 + 64 + 33_554_688 + 257
    assert sum(p.numel() for p in SimpleCNN().parameters()) == expected == 33_555_905


def test_upgraded_layers_and_shapes_are_the_studys():
    model = UpgradedCNN()
    layers = list(model.features)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 64), (64, 128), (128, 256)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    # conv, batch norm, ReLU per block; a 2x2 max pool after each of the first three blocks only
    kinds = [type(m) for m in layers]
    block = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert kinds == block + [nn.MaxPool2d] + block + [nn.MaxPool2d] + block + [nn.MaxPool2d] + block
    assert [m.num_features for m in layers if isinstance(m, nn.BatchNorm2d)] == [32, 64, 128, 256]
    assert all(m.kernel_size == 2 for m in layers if isinstance(m, nn.MaxPool2d))
    pool, flatten, dropout, fc = model.classifier
    assert isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size == 1 and isinstance(flatten, nn.Flatten)
    assert isinstance(dropout, SeededDropout) and dropout.p == 0.4
    assert (fc.in_features, fc.out_features) == (256, 1)
    x = torch.zeros(2, 3, 128, 128)
    assert model.features(x).shape == (2, 256, 16, 16)
    assert model(x).shape == (2,)


def test_upgraded_parameter_count():
    # convs 3*32*9+32, 32*64*9+64, 64*128*9+128, 128*256*9+256; batch norms 2*(32+64+128+256); fc 256+1
    expected = 896 + 18_496 + 73_856 + 295_168 + 960 + 257
    assert sum(p.numel() for p in UpgradedCNN().parameters()) == expected == 389_633


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", MODELS)
def test_build_model_draws_pytorchs_default_init_from_the_generator_alone(name):
    torch.manual_seed(3)
    default = weights(MODELS[name]())  # PyTorch's own init from a global RNG seeded 3
    torch.manual_seed(4)
    before = torch.get_rng_state()
    built = weights(build_model(name, torch.Generator().manual_seed(3)))
    assert torch.equal(torch.get_rng_state(), before)  # building neither reads nor advances the global RNG
    assert same_weights(built, default)
    assert same_weights(built, weights(build_model(name, torch.Generator().manual_seed(3))))
    assert not same_weights(built, weights(build_model(name, torch.Generator().manual_seed(4))))


def test_build_model_is_unaffected_by_threads_using_the_global_rng():
    alone = {seed: weights(build_model("upgraded", torch.Generator().manual_seed(seed))) for seed in range(4)}
    stop, draws = threading.Event(), []

    def hammer():
        while not stop.is_set():
            torch.manual_seed(len(draws))
            draws.append(torch.rand(1))

    def build(seed: int) -> tuple[int, dict]:
        return seed, weights(build_model("upgraded", torch.Generator().manual_seed(seed)))

    # Replicates build side by side while another thread reseeds the global RNG, switching
    # threads often: initialising from the global RNG would give other weights in most builds.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        while len(draws) < 10:  # the other thread is under way
            pass
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(build, list(range(4)) * 5))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch_interval)
    assert all(same_weights(w, alone[seed]) for seed, w in together)


def test_build_model_rejects_an_unknown_name():
    with pytest.raises(RatioCnnError, match=r"'resnet'.*simple, upgraded"):
        build_model("resnet", torch.Generator())


def test_seeded_dropout_masks_come_from_its_generator_only():
    dropout = SeededDropout(0.4)
    assert dropout.state_dict() == nn.Dropout(0.4).state_dict() == {}
    dropout.generator = torch.Generator().manual_seed(0)
    x = torch.ones(10_000)
    state = dropout.generator.get_state()
    global_before = torch.get_rng_state()
    first = dropout(x)
    assert torch.equal(torch.get_rng_state(), global_before)
    kept = first[first != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.6))  # inverted dropout: kept values are rescaled
    assert 0.35 < (first == 0).float().mean() < 0.45
    assert not torch.equal(dropout(x), first)  # the generator moved on: a new mask
    dropout.generator.set_state(state)
    assert torch.equal(dropout(x), first)  # same generator state, same mask
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_attached_generator_leaves_the_global_rng_alone_in_training():
    model = build_model("upgraded", torch.Generator().manual_seed(0)).train()
    generator = torch.Generator().manual_seed(1)
    attach_dropout_generator(model, generator)
    assert model.classifier[2].generator is generator
    x = torch.randn(2, 3, 128, 128)
    state, global_before = generator.get_state(), torch.get_rng_state()
    first = model(x)
    assert torch.equal(torch.get_rng_state(), global_before)
    generator.set_state(state)
    assert torch.equal(model(x), first)


def test_overfits_one_batch():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 128, 128), dtype=torch.uint8)
    labels = torch.tensor([0.0, 1.0] * 8)
    generator = torch.Generator().manual_seed(0)
    model = build_model("simple", generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    plan = make_plan("none", images, labels, generator)
    steps = [train_one_epoch(model, optimizer, plan, 16, generator, generator) for _ in range(20)]
    # Random pixels, one batch: a working loop memorises it (the loss bounces on the way down).
    assert steps[0]["loss"] > 0.5
    assert min(s["loss"] for s in steps[-10:]) < 0.01
    assert max(s["accuracy"] for s in steps[-10:]) == 1.0


def test_a_replicate_draws_from_its_seeds_generators_alone():
    images = torch.randint(0, 256, (8, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0.0, 1.0] * 4)
    global_before = torch.get_rng_state()
    a, b, c = (build_replicate("upgraded", "synthetic", seed, images, labels, 1e-4, "fp32", 2) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), global_before)
    assert same_weights(weights(a.model), weights(b.model)) and not same_weights(weights(a.model), weights(c.model))
    assert torch.equal(a.plan.images, b.plan.images) and not torch.equal(a.plan.images, c.plan.images)
    assert a.model.classifier[2].generator is a.device_generator  # dropout masks: the seed's too
    assert set(a.generators) == {"order", "device"}  # the names checkpoints save their states under
    bf16 = build_replicate("simple", "none", 0, images, labels, 1e-4, "bf16", 0)
    assert bf16.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_normalise_maps_uint8_to_standardised_floats():
    white = normalise(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert white.dtype == torch.float32
    assert torch.allclose(white[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
