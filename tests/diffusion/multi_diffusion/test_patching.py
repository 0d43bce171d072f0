"""Patching primitives: grid geometry, round trips, adjoints, random patches, validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpcdiff.diffusion.multi_diffusion import (
    GridPatching2D,
    RandomPatching2D,
    image_batching,
    image_fuse,
)

# (H, W), (Hp, Wp), overlap, boundary: square, rectangular, non-divisible, one-patch grids.
GEOMETRIES = [
    ((16, 16), (8, 8), 0, 0),
    ((16, 16), (8, 8), 2, 0),
    ((17, 23), (8, 8), 2, 1),
    ((17, 23), (6, 10), 1, 2),
    ((32, 20), (9, 9), 3, 2),
    ((9, 31), (9, 5), 0, 1),
    ((12, 12), (12, 12), 0, 0),
    ((40, 13), (16, 13), 4, 3),
    ((21, 21), (10, 7), 5, 0),
]


def naive_patches(x, patch_shape, overlap, boundary):
    """Reference-by-definition: reflect-pad with F.pad, slice patches x-major (p = ix n_y + iy)."""
    (H, W), (Hp, Wp) = x.shape[-2:], patch_shape
    sy, sx = Hp - overlap - boundary, Wp - overlap - boundary
    ny, nx = math.ceil(H / sy), math.ceil(W / sx)
    pad_b = sy * (ny - 1) + Hp - H
    pad_r = sx * (nx - 1) + Wp - W
    xp = F.pad(x, (boundary, pad_r, boundary, pad_b), mode="reflect")
    patches = [
        xp[:, :, iy * sy : iy * sy + Hp, ix * sx : ix * sx + Wp]
        for ix in range(nx)
        for iy in range(ny)
    ]
    return torch.cat(patches, dim=0), (ny, nx), (sy, sx)


def naive_fuse(patches, img_shape, overlap, boundary, batch):
    """Sum of the patches over the padded image divided by the count, then cropped."""
    (Hp, Wp), (H, W) = patches.shape[-2:], img_shape
    sy, sx = Hp - overlap - boundary, Wp - overlap - boundary
    ny, nx = math.ceil(H / sy), math.ceil(W / sx)
    total = torch.zeros(batch, patches.shape[1], sy * (ny - 1) + Hp, sx * (nx - 1) + Wp)
    count = torch.zeros_like(total)
    for p in range(ny * nx):
        iy, ix = p % ny, p // ny
        window = (
            slice(None),
            slice(None),
            slice(iy * sy, iy * sy + Hp),
            slice(ix * sx, ix * sx + Wp),
        )
        total[window] += patches[p * batch : (p + 1) * batch]
        count[window] += 1
    crop = (..., slice(boundary, boundary + H), slice(boundary, boundary + W))
    return total[crop] / count[crop]


@pytest.mark.parametrize("img, patch, overlap, boundary", GEOMETRIES)
def test_grid_apply_and_fuse_match_definition(img, patch, overlap, boundary):
    torch.manual_seed(0)
    x = torch.randn(3, 2, *img)
    gp = GridPatching2D(img, patch, overlap, boundary)
    expected, (ny, nx), _ = naive_patches(x, patch, overlap, boundary)
    patches = gp.apply(x)
    assert gp.patch_num == ny * nx
    assert torch.equal(patches, expected)
    assert torch.allclose(gp.fuse(patches, batch_size=3), x, atol=1e-6)  # round trip
    y = torch.randn_like(patches)
    assert torch.allclose(gp.fuse(y, 3), naive_fuse(y, img, overlap, boundary, 3), atol=1e-6)
    # Rows of a chunk equal the same rows of the full extraction.
    stop = min(11, patches.shape[0])
    assert torch.equal(gp.apply_rows(x, 1, stop), patches[1:stop])


@pytest.mark.parametrize("img, patch, overlap, boundary", GEOMETRIES[2:6])
def test_grid_gradients_are_adjoints(img, patch, overlap, boundary):
    """<apply(x), y> = <x, apply^T y> and <fuse(y), v> = <y, fuse^T v>, checked by autograd
    against the F.pad + slicing definition."""
    torch.manual_seed(1)
    gp = GridPatching2D(img, patch, overlap, boundary)
    x = torch.randn(2, 3, *img, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w = torch.randn(gp.patch_num * 2, 3, *gp.patch_shape)
    (g,) = torch.autograd.grad((gp.apply(x) * w).sum(), x)
    (g_ref,) = torch.autograd.grad(
        (naive_patches(x_ref, patch, overlap, boundary)[0] * w).sum(), x_ref
    )
    assert torch.allclose(g, g_ref, atol=1e-5)
    y = w.clone().requires_grad_(True)
    y_ref = w.clone().requires_grad_(True)
    v = torch.randn(2, 3, *img)
    (g,) = torch.autograd.grad((gp.fuse(y, 2) * v).sum(), y)
    (g_ref,) = torch.autograd.grad((naive_fuse(y_ref, img, overlap, boundary, 2) * v).sum(), y_ref)
    assert torch.allclose(g, g_ref, atol=1e-6)


@pytest.mark.parametrize(
    "img, patch, overlap, boundary, expected",
    [
        ((2048, 2048), (256, 256), 32, 8, 100),  # stride 216 -> 10 x 10
        ((2048, 2048), (256, 256), 0, 0, 64),
        ((17, 23), (8, 8), 2, 1, 4 * 5),  # stride 5: ceil(17/5) = 4, ceil(23/5) = 5
        ((16, 16), (8, 8), 2, 0, 9),  # stride 6: 3 x 3
        ((721, 1440), (128, 128), 16, 4, 7 * 14),  # stride 108: ceil(721/108) = 7, 14
        ((10, 13), (6, 5), 1, 1, 3 * 5),  # strides 4, 3
        ((8, 8), (12, 4), 0, 0, 2),  # patch cropped to (8, 4)
    ],
)
def test_patch_count_table(img, patch, overlap, boundary, expected):
    with pytest.warns(UserWarning) if patch[0] > img[0] else _no_warning():
        gp = GridPatching2D(img, patch, overlap, boundary)
    assert gp.patch_num == expected
    assert gp.patch_origins().shape == (expected, 2)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_geometry_helpers_and_padded_coordinates():
    gp = GridPatching2D((17, 23), (8, 8), 2, 1)  # stride 5, 4 x 5 patches
    assert gp.padded_shape == (5 * 3 + 8 + 1, 5 * 4 + 8 + 1)
    assert gp.padding == (1, 29 - 23 - 1, 1, 24 - 17 - 1)
    origins = gp.patch_origins()
    assert origins[0].tolist() == [0, 0] and origins[1].tolist() == [5, 0]  # x-major order
    assert origins[4].tolist() == [0, 5]
    count = GridPatching2D.get_overlap_count((8, 8), (17, 23), 2, 1)
    assert torch.equal(gp.weight_map(), count[0, 0])
    assert count.max() == 4 and count[0, 0, 3, 3] == 1 and count[0, 0, 5, 3] == 2
    # Global index: patch pixel -> image pixel through the reflection.
    gi = gp.global_index()
    assert gi.shape == (20, 2, 8, 8) and gi.dtype == torch.long
    assert gi[0, 0, :, 0].tolist() == [1, 0, 1, 2, 3, 4, 5, 6]  # padded row 0 reflects row 1
    x = torch.arange(17 * 23.0).reshape(1, 1, 17, 23)
    flat = gi[:, 0] * 23 + gi[:, 1]
    assert torch.equal(gp.apply(x)[:, 0], flat.float())


def test_cosine_window_is_a_partition_of_unity_inside_the_image():
    gp = GridPatching2D((64, 48), (16, 16), 4, 2, window="cosine")
    w = gp.window_weights()
    assert w.min() > 0 and w[0, 0] < 0.01 and w[8, 8] == 1
    wmap = gp.weight_map()
    left, _, top, _ = gp.padding
    interior = wmap[top + 14 : top + 50, left + 14 : left + 34]  # away from the image edges
    assert torch.allclose(interior, torch.ones_like(interior), atol=1e-12)
    x = torch.randn(2, 3, 64, 48)
    assert torch.allclose(gp.fuse(gp.apply(x), 2), x, atol=1e-5)


def test_tiled_accumulation_equals_fuse():
    """Summing ``accumulate`` over tiles and row chunks reproduces ``fuse`` (domain split)."""
    torch.manual_seed(2)
    for window in ("uniform", "cosine"):
        gp = GridPatching2D((30, 26), (10, 8), 3, 1, window=window)
        patches = torch.randn(gp.patch_num * 2, 3, 10, 8)
        tiles = []
        for (oy, h), (ox, w) in [((0, 13), (0, 26)), ((13, 17), (0, 11)), ((13, 17), (11, 15))]:
            acc = torch.zeros(2, 3, h, w)
            for start in range(0, patches.shape[0], 7):
                gp.accumulate(acc, patches[start : start + 7], start, offset=(oy, ox))
            tiles.append(acc)
        fused = torch.cat([tiles[0], torch.cat(tiles[1:], dim=3)], dim=2)
        assert torch.allclose(fused, gp.fuse(patches, 2), atol=1e-6)


def test_patching_runs_under_torch_compile():
    gp = GridPatching2D((17, 23), (8, 8), 2, 1, window="cosine")
    rp = RandomPatching2D((17, 23), (8, 8), 3)
    x = torch.randn(2, 3, 17, 23, requires_grad=True)
    compiled = torch.compile(lambda x: (gp.fuse(2 * gp.apply(x), 2), rp.apply(x)))
    fused, patches = compiled(x)
    assert torch.allclose(fused, 2 * x, atol=1e-5)
    assert torch.equal(patches, rp.apply(x))
    (g,) = torch.autograd.grad(fused.sum(), x)
    assert torch.allclose(g, torch.full_like(x, 2.0), atol=1e-5)


def test_bf16_and_integer_inputs_accumulate_in_float32():
    gp = GridPatching2D((20, 20), (8, 8), 3, 1)
    x = torch.randn(2, 3, 20, 20).to(torch.bfloat16)
    fused = gp.fuse(gp.apply(x), 2)
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, x.float(), atol=1e-6)  # overlaps average equal bf16 values
    xi = torch.randint(0, 100, (1, 1, 20, 20))
    assert gp.apply(xi).dtype == torch.int64
    assert torch.equal(gp.fuse(gp.apply(xi), 1), xi.float())


def test_functional_forms_and_additional_input():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 17, 23)
    interp = torch.randn(2, 1, 8, 8)
    out = image_batching(x, 8, 8, 2, 1, input_interp=interp)
    expected, (ny, nx), _ = naive_patches(x, (8, 8), 2, 1)
    assert torch.equal(out[:, :3], expected)
    assert torch.equal(out[:, 3:], interp.repeat(ny * nx, 1, 1, 1))
    assert torch.allclose(image_fuse(out[:, :3], 17, 23, 2, 2, 1), x, atol=1e-6)
    count = 2 * GridPatching2D.get_overlap_count((8, 8), (17, 23), 2, 1)
    assert torch.allclose(image_fuse(out[:, :3], 17, 23, 2, 2, 1, count), x / 2, atol=1e-6)
    gp = GridPatching2D((17, 23), (8, 8), 2, 1)
    extra = torch.randn(2, 4, 5, 6)
    resized = F.interpolate(extra, size=(8, 8), mode="bilinear")
    assert torch.equal(gp.apply(x, additional_input=extra)[:, 3:], resized.repeat(20, 1, 1, 1))


def test_random_patching_in_bounds_and_reproducible():
    rp = RandomPatching2D((17, 23), (8, 5), patch_num=50)
    idx = rp.patch_indices
    assert idx.shape == (50, 2)
    assert idx[:, 0].min() >= 0 and idx[:, 0].max() <= 17 - 8
    assert idx[:, 1].min() >= 0 and idx[:, 1].max() <= 23 - 5
    rp.reset_patch_indices(generator=torch.Generator().manual_seed(7))
    first = rp.patch_indices.clone()
    rp.reset_patch_indices(generator=torch.Generator().manual_seed(7))
    assert torch.equal(rp.patch_indices, first)
    g = torch.Generator().manual_seed(7)  # y corners are drawn first, then x
    assert torch.equal(first[:, 0], torch.randint(0, 10, (50,), generator=g))
    assert torch.equal(first[:, 1], torch.randint(0, 19, (50,), generator=g))
    x = torch.randn(3, 2, 17, 23)
    patches = rp.apply(x)
    for p in (0, 17, 49):
        y0, x0 = first[p].tolist()
        assert torch.equal(patches[3 * p : 3 * p + 3], x[:, :, y0 : y0 + 8, x0 : x0 + 5])
    gi = rp.global_index()
    assert torch.equal(gi[5, 0, :, 0], first[5, 0] + torch.arange(8))
    rp.set_patch_num(4)
    assert rp.apply(x).shape == (12, 2, 8, 5)


def test_random_patching_gradient_scatters_back():
    rp = RandomPatching2D((10, 12), (4, 4), patch_num=6)
    x = torch.randn(2, 1, 10, 12, requires_grad=True)
    (g,) = torch.autograd.grad(rp.apply(x).sum(), x)
    coverage = torch.zeros(10, 12)
    for y0, x0 in rp.patch_indices.tolist():
        coverage[y0 : y0 + 4, x0 : x0 + 4] += 1
    assert torch.equal(g, coverage.expand(2, 1, 10, 12))


def test_channels_last_is_preserved_by_random_patching():
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    out = RandomPatching2D((12, 12), (4, 4), 3).apply(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "args, error",
    [
        (((16, 16), (8, 8), 8, 0), ValueError),  # stride 0
        (((16, 16), (8, 8), 9, 0), ValueError),  # negative stride
        (((16, 16), (8, 8), 2, 3), ValueError),  # 8 <= 2 + 2 * 3
        (((16, 16), (8, 8), -1, 0), ValueError),
        (((16, 16), (8, 8), 0, 0, "hann"), ValueError),
        (((16, 16, 1), (8, 8)), ValueError),
        (((16, 16), (8,)), ValueError),
    ],
)
def test_impossible_grid_geometries_raise(args, error):
    with pytest.raises(error):
        GridPatching2D(*args)


def test_functional_and_fuse_validation():
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="patch_shape_x"):
        image_batching(x, 8, 4, 2, 1)
    with pytest.raises(ValueError, match="batch size"):
        image_batching(x, 8, 8, 0, 0, input_interp=torch.randn(3, 1, 8, 8))
    with pytest.raises(ValueError, match="patch shape"):
        image_batching(x, 8, 8, 0, 0, input_interp=torch.randn(2, 1, 4, 8))
    with pytest.raises(RuntimeError, match="reflect padding"):
        image_batching(torch.randn(1, 1, 4, 4), 8, 8, 0, 0)  # patch larger than the image
    gp = GridPatching2D((16, 16), (8, 8))
    with pytest.raises(RuntimeError, match="rows"):
        gp.fuse(torch.randn(7, 1, 8, 8), batch_size=2)
    with pytest.raises(RuntimeError, match="shape"):
        gp.fuse(torch.randn(8, 1, 4, 4), batch_size=2)
    with pytest.raises(ValueError, match="out of range"):
        gp.apply_rows(x, 0, 9)
    with pytest.raises(TypeError):
        gp.apply([1, 2])
    with pytest.raises(ValueError, match="patch_num"):
        RandomPatching2D((16, 16), (8, 8), 0)


def test_module_apply_with_a_function_keeps_nn_module_semantics():
    """DeepSpeed (and init code) call ``module.apply(fn)`` on every submodule."""
    from hpcdiff.diffusion.multi_diffusion import GridPatching2D, RandomPatching2D

    for patching in (RandomPatching2D((8, 8), (4, 4), 2), GridPatching2D((8, 8), (4, 4))):
        seen = []
        assert patching.apply(seen.append) is patching
        assert seen == [patching]
