import torch

from ratio_cnn.model import SimpleCNN
from ratio_cnn.train import normalise, train_one_epoch


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


def test_overfits_one_batch():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 128, 128), dtype=torch.uint8)
    labels = torch.tensor([0.0, 1.0] * 8)
    model = SimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    steps = [train_one_epoch(model, optimizer, images, labels, 16, generator) for _ in range(20)]
    # Random pixels, one batch: a working loop memorises it (the loss bounces on the way down).
    assert steps[0]["loss"] > 0.5
    assert min(s["loss"] for s in steps[-10:]) < 0.01
    assert max(s["accuracy"] for s in steps[-10:]) == 1.0


def test_normalise_maps_uint8_to_standardised_floats():
    white = normalise(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert white.dtype == torch.float32
    assert torch.allclose(white[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
