import pytest
import torch
import torchvision.transforms.functional as TF

from ratio_cnn import strategies
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.strategies import STRATEGIES, colour_jitter, crop_boxes, flip_and_turn, make_plan, resized_crop

CPU = torch.device("cpu")


def training_set(benign: int = 10, malignant: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign images all black, malignant ones bright: any pixel of a synthetic image says where it came from."""
    images = torch.zeros(benign + malignant, 3, size, size, dtype=torch.uint8)
    images[benign:] = torch.randint(200, 256, (malignant, 3, size, size), generator=torch.Generator().manual_seed(0))
    return images, torch.tensor([0.0] * benign + [1.0] * malignant)


def test_unknown_strategy_names_the_allowed_ones():
    with pytest.raises(RatioCnnError, match=r"'smote'.*none, pos_weight, oversample, augment, synthetic"):
        make_plan("smote", *training_set(), torch.Generator())


def test_a_training_set_without_malignant_images_is_refused():
    images, labels = training_set(malignant=0)
    with pytest.raises(RatioCnnError, match="0 malignant and 10 benign"):
        make_plan("oversample", images, labels, torch.Generator())


@pytest.mark.parametrize("strategy, odds", [
    ("none", 3 / 10), ("augment", 3 / 10), ("pos_weight", 1.0), ("oversample", 1.0), ("synthetic", (3 + 7) / 10)])
def test_train_odds_are_what_the_loss_sees(strategy, odds):
    plan = make_plan(strategy, *training_set(), torch.Generator().manual_seed(0), synthetic_malignant=7)
    assert plan.train_odds == pytest.approx(odds)


def test_none_is_a_permutation_of_the_training_set_untransformed():
    images, labels = training_set()
    plan = make_plan("none", images, labels, torch.Generator())
    assert plan.images is images and plan.labels is labels and plan.pos_weight is None
    order = plan.epoch_order(torch.Generator().manual_seed(0))
    assert order.dtype == torch.int64 and sorted(order.tolist()) == list(range(13))
    assert torch.equal(order, torch.randperm(13, generator=torch.Generator().manual_seed(0)))  # today's order
    x = plan.transform(images[:4], torch.Generator())
    assert x.dtype == torch.float32 and torch.equal(x, images[:4].float())


def test_pos_weight_is_benign_over_malignant():
    plan = make_plan("pos_weight", *training_set(benign=10, malignant=4), torch.Generator())
    assert plan.pos_weight == 2.5
    assert all(make_plan(s, *training_set(), torch.Generator()).pos_weight is None for s in ("none", "oversample", "augment"))


def test_oversample_balances_every_epoch_with_existing_malignant_images():
    images, labels = training_set(benign=10, malignant=3)
    plan = make_plan("oversample", images, labels, torch.Generator())
    generator = torch.Generator().manual_seed(0)
    epochs = [plan.epoch_order(generator) for _ in range(3)]
    for order in epochs:
        assert len(order) == 20 and labels[order].sum() == 10  # as many malignant draws as benign images
        assert sorted(i for i in order.tolist() if i < 10) == list(range(10))  # every benign image once
        assert set(order.tolist()) - set(range(10)) <= {10, 11, 12}  # malignant draws: existing indices only
    assert labels[epochs[0]].tolist() != sorted(labels[epochs[0]].tolist())  # shuffled, not benign then malignant
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(plan.epoch_order(torch.Generator().manual_seed(0)), epochs[0])


def test_flip_and_turn_follows_the_draws_of_each_image():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    flip_h = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    flip_v = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    turns = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    expected = []
    for image, h, v, k in zip(x, flip_h, flip_v, turns):
        image = image.flip(2) if h else image
        image = image.flip(1) if v else image
        expected.append(torch.rot90(image, int(k), (1, 2)))
    assert torch.equal(flip_and_turn(x, flip_h, flip_v, turns), torch.stack(expected))
    no = torch.zeros(8, dtype=torch.bool)
    assert torch.equal(flip_and_turn(x, no, no, torch.zeros(8, dtype=torch.int64)), x)


def test_colour_jitter_is_torchvisions_per_image_and_factor_one_is_identity():
    x = torch.rand(4, 3, 8, 8) * 255
    brightness, contrast, saturation = torch.tensor([[0.9, 1.1, 1.0, 0.95], [1.1, 0.9, 1.05, 1.0], [1.0, 0.92, 1.1, 0.9]])
    expected = torch.stack([
        TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(image / 255, float(b)), float(c)), float(s))
        for image, b, c, s in zip(x, brightness, contrast, saturation)])
    assert torch.allclose(colour_jitter(x, brightness, contrast, saturation) / 255, expected, atol=1e-5)
    ones = torch.ones(4)
    assert torch.equal(colour_jitter(x, ones, ones, ones), x)
    assert colour_jitter(torch.full((1, 3, 2, 2), 250.0), *torch.full((3, 1), 1.1)).max() == 255  # clamped


def test_augment_changes_pixels_reproducibly_within_range():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    plan = make_plan("augment", images, torch.tensor([0.0, 1.0] * 3), torch.Generator())
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    x = plan.transform(images, generator)
    assert x.shape == images.shape and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 255
    assert not torch.equal(x, images.float())
    assert not torch.equal(plan.transform(images, generator), x)  # new draws each batch
    generator.set_state(state)
    assert torch.equal(plan.transform(images, generator), x)


def test_crop_boxes_keep_60_to_100_percent_of_the_image_inside_it():
    left, top, width, height = crop_boxes(2000, torch.Generator().manual_seed(0), CPU).unbind(1)
    area, aspect = width * height, width / height
    assert area.min() >= 0.6 and area.max() <= 1 and aspect.min() >= 0.75 - 1e-6 and aspect.max() <= 4 / 3 + 1e-6
    assert left.min() >= 0 and top.min() >= 0 and (left + width).max() <= 1 and (top + height).max() <= 1
    assert area.max() > 0.95 and area.min() < 0.65  # the whole range is drawn


def test_resized_crop_resizes_the_box_bilinearly():
    x = torch.randint(0, 256, (2, 3, 32, 32)).float()
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.allclose(resized_crop(x, whole), x, atol=0.01)
    # rows 4-27, columns 8-23; inside the border it is torchvision's resized_crop (which clamps
    # at the crop's edge where grid_sample reads the pixel just outside it)
    got = resized_crop(x[:1], torch.tensor([[8 / 32, 4 / 32, 16 / 32, 24 / 32]]))
    expected = TF.resized_crop(x[:1], 4, 8, 24, 16, [32, 32], antialias=False)
    assert torch.allclose(got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=0.01)


def test_synthetic_images_come_only_from_training_malignant_images(monkeypatch):
    monkeypatch.setattr(strategies, "SYNTHETIC_CHUNK", 4)  # several chunks and a short last one
    images, labels = training_set(benign=10, malignant=3)
    plan = make_plan("synthetic", images, labels, torch.Generator().manual_seed(0), synthetic_malignant=10)
    assert plan.images.shape == (23, 3, 16, 16) and plan.images.dtype == torch.uint8
    assert torch.equal(plan.images[:13], images) and torch.equal(plan.labels, torch.tensor([0.0] * 10 + [1.0] * 13))
    synthetic = plan.images[13:].float()
    # sources 200-255, brightness and contrast at most 10% off: a benign (black) source would show as 0
    assert synthetic.amin(dim=(1, 2, 3)).min() > 150
    assert len({tuple(s.flatten()[:20].tolist()) for s in synthetic}) == 10  # ten different images
    assert not any(torch.equal(s, m.float()) for s in synthetic for m in images[10:])  # not plain copies
    assert plan.pos_weight is None and not plan.augment and not plan.balance_classes  # then trained like none


def test_same_seed_same_synthetic_plan_and_another_seed_another():
    images, labels = training_set()
    def synthetic(seed: int) -> torch.Tensor:
        return make_plan("synthetic", images, labels, torch.Generator().manual_seed(seed), synthetic_malignant=5).images
    assert torch.equal(synthetic(0), synthetic(0))
    assert not torch.equal(synthetic(0), synthetic(1))


def test_every_strategy_has_a_plan():
    images, labels = training_set()
    for strategy in STRATEGIES:
        plan = make_plan(strategy, images, labels, torch.Generator().manual_seed(0), synthetic_malignant=2)
        order = plan.epoch_order(torch.Generator().manual_seed(0))
        x = plan.transform(plan.images[order[:4]], torch.Generator().manual_seed(0))
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
