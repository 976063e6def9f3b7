"""The attention PNG: decoded back and checked as an image (size, content, one distinct row per layer)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from eca_serve.pipelines.base import LayerWeights
from eca_serve.pipelines.plots import ROW_GAP, ROW_HEIGHT, STRIP_WIDTH, TITLE_HEIGHT, attention_png, colour_map, strip

# The ECA-ResNet-50 layout: 16 bottleneck blocks, channels per stage, adaptive kernel sizes.
RESNET50 = [(f"layer{s + 1}.{b}.attn", c, k) for s, (n, c, k) in enumerate([(3, 256, 5), (4, 512, 5), (6, 1024, 5), (3, 2048, 7)])
            for b in range(n)]


def layers_of(spec: list[tuple[str, int, int]], seed: int = 0) -> list[LayerWeights]:
    rng = np.random.default_rng(seed)
    return [LayerWeights(name, "eca", c, k, rng.random(c, dtype=np.float32)) for name, c, k in spec]


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "P"
    return np.asarray(image.convert("RGB"))


def strip_pixels(pixels: np.ndarray, row: int) -> np.ndarray:
    """[ROW_HEIGHT, STRIP_WIDTH, 3] pixels of layer ``row``'s heat strip (the strips end PAD from the right)."""
    y = TITLE_HEIGHT + row * (ROW_HEIGHT + ROW_GAP)
    right = pixels.shape[1] - 10
    return pixels[y:y + ROW_HEIGHT, right - STRIP_WIDTH:right]


def test_one_row_per_layer_showing_its_weights():
    spec = [("layer1.0.attn", 64, 3), ("layer1.1.attn", 64, 3), ("layer2.0.attn", 128, 5)]
    layers = layers_of(spec)
    layers[1] = LayerWeights("layer1.1.attn", "eca", 64, 3, np.linspace(0, 1, 64, dtype=np.float32))
    pixels = decode(attention_png(layers, "shapes channel attention"))
    assert pixels.shape[0] == TITLE_HEIGHT + 3 * (ROW_HEIGHT + ROW_GAP) + 52 and pixels.shape[1] > STRIP_WIDTH + 100
    assert pixels.std() > 20 and (pixels < 100).any()  # not blank: colours and dark text
    rows = [strip_pixels(pixels, i) for i in range(3)]
    for i, row in enumerate(rows):
        assert (row == row[:1]).all()  # a strip is uniform down its height
        assert np.array_equal(row[0], colour_map(strip(layers[i].weights, STRIP_WIDTH)))
    assert not np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[1], rows[2])
    ramp = rows[1][0].astype(int)  # weights 0 -> 1: dark purple -> bright yellow
    assert ramp[0].sum() < 200 and ramp[-1].sum() > 500


def test_equal_weights_give_equal_rows_and_the_title_is_drawn():
    weights = np.full(32, 0.25, np.float32)
    layers = [LayerWeights(f"l{i}", "eca", 32, 3, weights) for i in range(2)]
    titled, untitled = (decode(attention_png(layers, t)) for t in ("a title", ""))
    assert np.array_equal(strip_pixels(titled, 0), strip_pixels(titled, 1))
    assert (titled[:TITLE_HEIGHT] != untitled[:TITLE_HEIGHT]).any() and (untitled[:TITLE_HEIGHT] == 255).all()


def test_strip_maps_channels_to_columns():
    assert strip(np.array([0.0, 1.0]), 4).tolist() == [0.0, 0.0, 1.0, 1.0]  # each channel repeated
    assert strip(np.array([0.0, 1.0, 0.5, 0.5]), 2).tolist() == [0.5, 0.5]  # block means
    assert strip(np.arange(2048) / 2047, 512).shape == (512,)
    assert colour_map(np.array([-1.0, np.nan, 2.0])).tolist() == [[68, 1, 84], [68, 1, 84], [253, 231, 37]]
    assert len({tuple(c) for c in colour_map(np.linspace(0, 1, 500))}) > 200  # a smooth scale, no banding


def test_no_layers_still_gives_a_figure():
    pixels = decode(attention_png([], "nothing"))
    assert pixels.shape[1] > STRIP_WIDTH and (pixels < 200).any()


@pytest.mark.parametrize("spec", [RESNET50, [("layer1.0.attn", 16, 3), ("layer4.1.attn", 128, 7)]], ids=["resnet50", "small"])
def test_png_has_a_row_per_layer(spec):
    png = attention_png(layers_of(spec), "channel attention")
    assert decode(png).shape[0] > len(spec) * ROW_HEIGHT
