"""Model-frame mapping, resize-pad, horizontal flip and scale jitter (pixelkit.data.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelkit.data.schema import Sample
from pixelkit.data.transforms import (
    ModelFrame,
    SampleTransform,
    TrainTransform,
    from_model_boxes,
    from_model_points,
    hflip,
    hflip_boxes,
    resize_pad,
    resize_pad_scale,
    resized_shape,
    swap_left_right,
    to_model_boxes,
    to_model_points,
)

SIZES = [(640, 427), (300, 500), (64, 64)]


def random_boxes(rng: np.random.Generator, w: int, h: int, n: int = 20) -> np.ndarray:
    xy0 = rng.uniform(0, [w, h], size=(n, 2))
    xy1 = rng.uniform(xy0, [w, h])
    return np.concatenate([xy0, xy1], axis=1)


# --------------------------------------------------------------------------------------------
# coordinates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", SIZES)
def test_box_and_point_round_trip(image_size: tuple[int, int]) -> None:
    w, h = image_size
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, w, h)
    model = to_model_boxes(boxes, image_size)
    # normalised = pixel / max(W, H), whatever the input size S
    np.testing.assert_allclose(model, boxes / max(w, h))
    assert model.min() >= 0 and model[:, [0, 2]].max() <= w / max(w, h) + 1e-12
    assert model[:, [1, 3]].max() <= h / max(w, h) + 1e-12
    np.testing.assert_allclose(from_model_boxes(model, image_size), boxes, atol=1e-9)
    points = rng.uniform(0, [w, h], size=(15, 2))
    np.testing.assert_allclose(
        from_model_points(to_model_points(points, image_size), image_size), points, atol=1e-9
    )
    # the whole image box
    np.testing.assert_allclose(
        to_model_boxes([[0, 0, w, h]], image_size), [[0, 0, w / max(w, h), h / max(w, h)]]
    )


def test_from_model_clips_to_the_image_and_keeps_nan() -> None:
    # A prediction in the padding (below a landscape image) maps onto the image edge.
    out = from_model_boxes([[0.5, 0.5, 1.2, 1.0], [np.nan] * 4], (640, 427))
    np.testing.assert_allclose(out[0], [320, 320, 640, 427])
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(from_model_points([[1.0, 1.0]], (300, 500)), [[300, 500]])


@pytest.mark.parametrize("image_size", SIZES)
def test_frame_round_trip_with_flip_and_jitter(image_size: tuple[int, int]) -> None:
    w, h = image_size
    rng = np.random.default_rng(1)
    frame = ModelFrame(image_size, 96, ratio=0.8, offset=(0, 0), flipped=True)
    boxes = random_boxes(rng, w, h)
    model = frame.boxes_to_model(boxes)
    assert (model[:, 2] >= model[:, 0]).all()  # the flip keeps x0 <= x1
    np.testing.assert_allclose(frame.boxes_from_model(model), boxes, atol=1e-9)
    pts = rng.uniform(0, [w, h], size=(10, 2))
    np.testing.assert_allclose(frame.points_from_model(frame.points_to_model(pts)), pts, atol=1e-9)
    # ratio 1, no offset, no flip: the plain mapping
    plain = ModelFrame(image_size, 96)
    np.testing.assert_allclose(plain.boxes_to_model(boxes), to_model_boxes(boxes, image_size))


def test_scale_and_shapes() -> None:
    assert resize_pad_scale((640, 427), 1024) == pytest.approx(1.6)
    assert resized_shape((640, 427), 1024) == (1024, 683)  # 427 * 1.6 = 683.2
    assert resized_shape((300, 500), 64) == (38, 64)  # 300 * 64 / 500 = 38.4
    with pytest.raises(ValueError):
        resize_pad_scale((0, 10), 64)


# --------------------------------------------------------------------------------------------
# resize_pad
# --------------------------------------------------------------------------------------------


def test_resize_pad_content_and_padding() -> None:
    # 40 x 20 solid colour -> S = 16: content 16 x 8 in the top-left, zeros below.
    img = Image.new("RGB", (40, 20), (255, 128, 0))
    t = resize_pad(img, 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert torch.allclose(t[:, :8, :], torch.tensor([1.0, 128 / 255, 0.0])[:, None, None])
    assert (t[:, 8:, :] == 0).all()
    # portrait 300 x 500 -> S = 64: content 38 wide, zeros to the right.
    arr = np.full((500, 300, 3), 200, np.uint8)
    t = resize_pad(arr, 64)
    assert torch.allclose(t[:, :, :38], torch.full((3, 64, 38), 200 / 255))
    assert (t[:, :, 38:] == 0).all()
    # float arrays and tensors take the torch path with the same layout
    t2 = resize_pad(np.full((500, 300, 3), 200 / 255, np.float32), 64)
    assert torch.allclose(t2[:, :, :38], torch.full((3, 64, 38), 200 / 255), atol=1e-5)
    assert (t2[:, :, 38:] == 0).all()
    t3 = resize_pad(torch.ones(3, 20, 40), 16)
    assert torch.allclose(t3[:, :8], torch.ones(3, 8, 16), atol=1e-5) and (t3[:, 8:] == 0).all()


def test_resize_pad_keeps_geometry() -> None:
    # A white square at pixels [20, 40) x [10, 30) of a 100 x 50 image -> S = 50 (scale 0.5):
    # model box [0.2, 0.1, 0.4, 0.3] -> pixels [10, 20) x [5, 15) of the tensor.
    arr = np.zeros((50, 100, 3), np.uint8)
    arr[10:30, 20:40] = 255
    t = resize_pad(arr, 50)
    box = to_model_boxes([[20, 10, 40, 30]], (100, 50))[0] * 50
    np.testing.assert_allclose(box, [10, 5, 20, 15])
    assert (t[:, 6:14, 11:19] > 0.99).all()
    mask = t[0] > 0.01
    assert not mask[:4].any() and not mask[16:].any()
    assert not mask[:, :9].any() and not mask[:, 21:].any()


# --------------------------------------------------------------------------------------------
# flip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the dog on the left .", "the dog on the right ."),
        ("Left and right", "Right and left"),
        ("RIGHT side, LEFT side", "LEFT side, RIGHT side"),
        ("leftover bright copyright lefty", "leftover bright copyright lefty"),
        ("left-hand side", "right-hand side"),
        ("the leftmost cup, moving rightwards", "the rightmost cup, moving leftwards"),
        ("in the top left", "in the top right"),
        ("", ""),
    ],
)
def test_swap_left_right(text: str, expected: str) -> None:
    assert swap_left_right(text) == expected
    assert swap_left_right(swap_left_right(text)) == text


def test_hflip_mirrors_everything_and_twice_is_identity() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    boxes = np.array([[5.0, 2.0, 15.0, 12.0], [0.0, 0.0, 50.0, 30.0]])
    points = np.array([[5.0, 7.0], [49.0, 1.0]])
    trace = np.array([[0.1, 0.2, 0.0], [0.7, 0.3, 0.05]])
    out = hflip(
        img, boxes=boxes, points=points, text="a cat on the left", utterances=["on", "the", "left"]
    )
    # x0' = W - x1, x1' = W - x0
    np.testing.assert_allclose(out.boxes, [[35, 2, 45, 12], [0, 0, 50, 30]])
    np.testing.assert_allclose(out.points, [[45, 7], [1, 1]])
    np.testing.assert_array_equal(out.image, img[:, ::-1])
    assert out.text == "a cat on the right" and out.utterances == ["on", "the", "right"]
    traces = hflip(width=1.0, traces=[trace]).traces
    np.testing.assert_allclose(traces[0], [[0.9, 0.2, 0.0], [0.3, 0.3, 0.05]])
    back = hflip(
        out.image, boxes=out.boxes, points=out.points, text=out.text, utterances=out.utterances
    )
    np.testing.assert_array_equal(back.image, img)
    np.testing.assert_allclose(back.boxes, boxes)
    np.testing.assert_allclose(back.points, points)
    assert back.text == "a cat on the left" and back.utterances == ["on", "the", "left"]
    pil = Image.fromarray(img)
    np.testing.assert_array_equal(np.asarray(hflip(hflip(pil).image).image), img)
    t = torch.from_numpy(img).permute(2, 0, 1)
    assert torch.equal(hflip(hflip(t).image).image, t)
    with pytest.raises(ValueError, match="width"):
        hflip(boxes=boxes)
    np.testing.assert_allclose(hflip_boxes(hflip_boxes(boxes, 50), 50), boxes)


# --------------------------------------------------------------------------------------------
# sample transform
# --------------------------------------------------------------------------------------------

RED = (220, 40, 40)


def painted(w: int = 100, h: int = 60, box: tuple[int, int, int, int] = (30, 10, 50, 40)):
    arr = np.full((h, w, 3), 120, np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = RED
    return Image.fromarray(arr)


def test_eval_transform_is_resize_pad_and_model_boxes() -> None:
    img = painted()
    s = Sample(
        "x.png",
        (100, 60),
        "refer",
        text="the red box on the left",
        boxes=[[30, 10, 50, 40]],
        utterances=["left"],
        utterance_boxes=[[-5, 10, 20, 20]],
        utterance_points=[[-2, 15]],
    )
    out = SampleTransform(64)(s, img)
    assert torch.equal(out.image, resize_pad(img, 64))
    np.testing.assert_allclose(out.boxes, [[0.3, 0.1, 0.5, 0.4]], atol=1e-6)
    assert out.text == s.text and not out.flipped and out.box_valid.all()
    # trace targets are clipped to the visible image (official: clip to [0, 1])
    np.testing.assert_allclose(out.utterance_boxes, [[0.0, 0.1, 0.2, 0.2]], atol=1e-6)
    np.testing.assert_allclose(out.utterance_points, [[0.0, 0.15]], atol=1e-6)
    np.testing.assert_allclose(out.frame.boxes_from_model(out.boxes), s.boxes, atol=1e-4)


def test_image_size_mismatch_is_an_error() -> None:
    s = Sample("x.png", (99, 60), "caption", source="caps.json#3")
    with pytest.raises(ValueError, match="caps.json#3.*100x60"):
        SampleTransform(32)(s, painted())


def _red_mask(t: torch.Tensor) -> np.ndarray:
    arr = (t.numpy() * 255).transpose(1, 2, 0)
    return (np.abs(arr - np.array(RED)) < 8).all(axis=2)


@pytest.mark.parametrize("seed", range(8))
def test_scale_jitter_keeps_boxes_on_the_object(seed: int) -> None:
    # Paint a red rectangle, transform with flip + jitter (crops above 1), and check that the
    # mapped box covers every red pixel of the output and that its inside is red.
    img = painted()
    s = Sample(
        "x.png", (100, 60), "refer", text="the red box on the left", boxes=[[30, 10, 50, 40]]
    )
    tr = TrainTransform(64, hflip_prob=0.5, scale_jitter=(0.5, 2.5))
    out = tr(s, img, rng=np.random.default_rng(seed))
    red = _red_mask(out.image)
    x0, y0, x1, y1 = out.boxes[0] * 64
    ys, xs = np.nonzero(red)
    if not out.box_valid[0]:
        assert not red.any()
        return
    assert red.any()
    # every red pixel lies within the box (pixel centres, one pixel of slack for rounding)
    assert xs.min() + 0.5 >= x0 - 1 and xs.max() + 0.5 <= x1 + 1
    assert ys.min() + 0.5 >= y0 - 1 and ys.max() + 0.5 <= y1 + 1
    # and the box's interior (shrunk by 1.5 px for the bilinear edge) is red
    ix0, iy0 = int(np.ceil(x0 + 1.5)), int(np.ceil(y0 + 1.5))
    ix1, iy1 = int(np.floor(x1 - 1.5)), int(np.floor(y1 - 1.5))
    if ix1 > ix0 and iy1 > iy0:
        assert red[iy0:iy1, ix0:ix1].all()
    assert out.text == ("the red box on the right" if out.flipped else "the red box on the left")
    np.testing.assert_allclose(
        out.frame.boxes_from_model(out.boxes)[0, [1, 3]].clip(10, 40),
        out.frame.boxes_from_model(out.boxes)[0, [1, 3]],
        atol=1e-4,
    )


def test_crop_drops_trace_targets_outside_the_window() -> None:
    # Scale 2 on a 64 x 64 image -> 128 x 128 resized; the window at offset (64, 64) shows
    # the bottom-right quarter. A trace box in the top-left quarter has no target any more; a
    # box across the centre is clipped to the window.
    s = Sample(
        "x.png",
        (64, 64),
        "trace",
        text="a b",
        utterances=["a", "b"],
        utterance_boxes=[[2, 2, 20, 20], [24, 24, 40, 40]],
        utterance_points=[[10, 10], [32, 32]],
    )
    frame = ModelFrame((64, 64), 64, ratio=2.0, offset=(64, 64))

    class Fixed(SampleTransform):
        def frame_for(self, image_size, rng=None):  # type: ignore[override]
            return frame

    out = Fixed(64)(s, Image.new("RGB", (64, 64)))
    assert np.isnan(out.utterance_boxes[0]).all() and np.isnan(out.utterance_points[0]).all()
    # [24, 40] * 2 - 64 = [-16, 16] px -> clipped [0, 16] / 64 = [0, 0.25]
    np.testing.assert_allclose(out.utterance_boxes[1], [0, 0, 0.25, 0.25], atol=1e-6)
    np.testing.assert_allclose(out.utterance_points[1], [0, 0], atol=1e-6)
    # Boxes: one cropped away entirely (flagged invalid, clipped to zero size), one clipped.
    r = Sample(
        "x.png",
        (64, 64),
        "densecap",
        boxes=[[2, 2, 20, 20], [24, 24, 40, 40]],
        box_texts=["a", "b"],
    )
    out = Fixed(64)(r, Image.new("RGB", (64, 64)))
    np.testing.assert_array_equal(out.box_valid, [False, True])
    np.testing.assert_allclose(out.boxes[1], [0, 0, 0.25, 0.25], atol=1e-6)


def test_generator_is_reproducible_and_differs_by_torch_seed() -> None:
    s = Sample("x.png", (100, 60), "caption", text="on the left")
    img = painted()

    # The per-process generator is seeded from (torch.initial_seed(), seed): a fresh
    # transform under the same torch seed draws the same frames (a new run, or a DataLoader
    # worker re-created with the same seed), another torch seed (another worker / epoch) not.
    def frames(torch_seed: int, seed: int = 7) -> list[ModelFrame]:
        torch.manual_seed(torch_seed)
        tr = TrainTransform(32, hflip_prob=0.5, scale_jitter=(0.5, 1.5), seed=seed)
        return [tr.frame_for((100, 60)) for _ in range(6)]

    a, b, c, d = frames(0), frames(0), frames(1), frames(0, seed=8)
    assert a == b and a != c and a != d
    assert {f.flipped for f in a} == {True, False}
    assert isinstance(TrainTransform(32)(s, img).image, torch.Tensor)
    with pytest.raises(ValueError):
        TrainTransform(32, scale_jitter=(1.2, 0.8))
