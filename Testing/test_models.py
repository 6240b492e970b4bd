"""Tests of XRayToCTLib.models: registry, typed constructors and their checks, shapes, widths,
the dense block, the view-lifting orientation against real DRRs, CNN-INR projection and
rendering, discriminator, intensity mappings, input normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from XRayToCTLib import drr, models
from XRayToCTLib.geometry import ProjectionGeometry, Volume, canonical_grid, rotation_matrix
from XRayToCTLib.models import intensity
from XRayToCTLib.models.common import ViewLifter
from XRayToCTLib.models.x2ct_gan import DenseBlock

torch.set_num_threads(1)

# a 4-stage X2CT-GAN small enough for 32^2 -> 32^3 in well under a second
SMALL_GAN = {"image_size": 32, "output_size": 32, "stem_channels": 8, "growth_rate": 4,
             "encoder_blocks": [1, 2, 2, 1], "decoder_channels": [4, 4, 8, 8, 16],
             "decoder_blocks": [1, 1, 1, 1, 0], "fusion_blocks": [1, 1, 1, 1, 0]}
SMALL_INR = {"image_size": 32, "output_size": 32, "stem_channels": 4,
             "encoder_channels": [8, 8], "hidden": 16, "chunk": 4096}


@pytest.mark.parametrize("name,config,nviews", [
    ("x2ct_gan", SMALL_GAN, 2), ("x2ct_gan_single", SMALL_GAN, 1), ("cnn_inr", SMALL_INR, 2)])
def test_shapes_and_spec(name, config, nviews):
    torch.manual_seed(0)
    m = models.build_model(name, config)
    assert isinstance(m.spec, models.ModelSpec) and m.spec.name == name
    assert len(m.spec.views) == nviews and m.spec.views[0] == "ap"
    assert m.spec.output_spacing == pytest.approx(256.0 / 32)
    x = models.normalize_views(torch.rand(2, nviews, 32, 32))
    y = m(x)
    assert y.shape == (2, 1, 32, 32, 32) and torch.isfinite(y).all()
    assert 0.0 <= float(y.detach().min()) and float(y.detach().max()) <= 1.0  # sigmoid
    # the spec is JSON-friendly and rebuilds the same architecture
    spec = models.ModelSpec.from_dict(json.loads(json.dumps(m.spec.to_dict())))
    assert spec == m.spec
    m2 = models.build_model(spec.name, spec.config)
    assert [p.shape for p in m2.parameters()] == [p.shape for p in m.parameters()]
    with pytest.raises(ValueError, match="expects views"):
        m(torch.rand(1, nviews + 1, 32, 32))


def test_x2ct_gan_trains_and_decouples_input_and_output_size():
    torch.manual_seed(0)
    m = models.build_model("x2ct_gan", {**SMALL_GAN, "image_size": 64, "output_size": 32})
    x = torch.rand(1, 2, 64, 64)
    y = m(x)
    assert y.shape == (1, 1, 32, 32, 32)
    y.mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("nope")
    with pytest.raises(ValueError, match="unknown config key") as err:
        models.build_model("x2ct_gan", {"growthrate": 3})
    assert "\n" not in str(err.value) and "'growth_rate'" in str(err.value)  # one line
    with pytest.raises(TypeError, match="dict"):
        models.build_model("cnn_inr", ["hidden", 3])
    with pytest.raises(ValueError, match="preset"):
        models.build_model("x2ct_gan", {"preset": "huge"})
    with pytest.raises(ValueError, match="encoder stages"):
        models.build_model("x2ct_gan", {"image_size": 32, "output_size": 32})  # 5 stages
    with pytest.raises(ValueError, match="intensity"):
        models.build_model("cnn_inr", {**SMALL_INR, "intensity": "linear"})


def test_typed_constructors():
    """The classes take explicit keyword arguments (what build_model maps a config onto),
    check them with one clear ValueError each, and record them all in ``spec.config``."""
    torch.manual_seed(0)
    gan = models.X2CTGenerator(**SMALL_GAN)
    torch.manual_seed(0)
    built = models.build_model("x2ct_gan", SMALL_GAN)
    assert gan.spec == built.spec and gan.spec.config["preset"] == "compact"
    assert all(torch.equal(a, b) for a, b in zip(gan.state_dict().values(),
                                                  built.state_dict().values()))
    single = models.X2CTGeneratorSingle(**SMALL_GAN)
    assert single.spec.views == ("ap",) and single.spec.name == "x2ct_gan_single"
    with torch.device("meta"):  # a width argument overrides its preset's value only
        seedish = models.X2CTGenerator(preset="seed", growth_rate=8)
    assert seedish.spec.config["growth_rate"] == 8 and seedish.spec.config["stem_channels"] == 64
    inr = models.CNNINR(**{**SMALL_INR, "views": ("lateral", "ap")})
    assert inr.spec.views == ("lateral", "ap") and inr.spec.config["encoder_channels"] == [8, 8]
    # a config dict is not an argument: the arguments are keyword-only
    with pytest.raises(TypeError):
        models.X2CTGenerator(SMALL_GAN)  # type: ignore[misc]
    geom = {v: ProjectionGeometry.from_dict(g) for v, g in gan.spec.geometry.items()}
    assert models.X2CTGenerator(**{**SMALL_GAN, "geometry": geom}).spec == gan.spec
    bad = [
        (models.X2CTGenerator, {"growth_rate": 0}, "growth_rate must be an integer >= 1"),
        (models.X2CTGenerator, {"stem_channels": 2.5}, "stem_channels must be an integer"),
        (models.X2CTGenerator, {"head_kernel": 4}, "head_kernel must be odd"),
        (models.X2CTGenerator, {"encoder_blocks": 3}, "encoder_blocks must be a list"),
        (models.X2CTGenerator, {"decoder_channels": [4, 4, 8, 8]}, "need 5 entries"),
        (models.X2CTGenerator, {"bottleneck_dropout": 1.0}, r"bottleneck_dropout .*\[0, 1\)"),
        (models.X2CTGenerator, {"lift": "ortho"}, "lift must be one of perspective"),
        (models.X2CTGenerator, {"output_activation": "tanh"}, "output_activation must be"),
        (models.X2CTGenerator, {"views": "ap"}, "list of view names"),
        (models.X2CTGenerator, {"views": ["ap", "ap"]}, "distinct"),
        (models.X2CTGenerator, {"output_spacing": -1.0}, "output_spacing"),
        (models.X2CTGenerator, {"image_size": 2}, "image_size must be an integer >= 4"),
        (models.X2CTGenerator, {"geometry": {"ap": ProjectionGeometry.preset("ap")}},
         "the ap geometry has"),
        (models.CNNINR, {"hidden": 0}, "hidden must be an integer >= 1"),
        (models.CNNINR, {"encoder_channels": [8, 0]}, r"encoder_channels\[1\]"),
        (models.CNNINR, {"shared_encoder": "yes"}, "shared_encoder"),
        (models.CNNINR, {"pe_frequencies": -1}, "pe_frequencies must be an integer >= 0"),
        (models.CNNINR, {"intensity": "linear"}, "intensity mapping"),
    ]
    for cls, change, message in bad:
        base = SMALL_GAN if cls is models.X2CTGenerator else SMALL_INR
        with pytest.raises(ValueError, match=message):
            cls(**{**base, **change})


def test_dense_block_has_densenet_layer_names():
    """The encoder's dense block keeps the parameter names of MONAI's DenseNet layers (the
    shipped packages' weights load unchanged) and appends ``growth_rate`` channels per layer."""
    block = DenseBlock(2, layers=2, in_channels=6, bn_size=2, growth_rate=3)
    assert [(k, tuple(v.shape)) for k, v in block.state_dict().items()] == [
        ("denselayer1.layers.conv1.weight", (6, 6, 1, 1)),
        ("denselayer1.layers.conv2.weight", (3, 6, 3, 3)),
        ("denselayer2.layers.conv1.weight", (6, 9, 1, 1)),
        ("denselayer2.layers.conv2.weight", (3, 6, 3, 3))]
    assert [n for n, _ in block.denselayer1.layers.named_children()] == [
        "norm1", "relu1", "conv1", "norm2", "relu2", "conv2"]
    assert block(torch.rand(2, 6, 8, 8)).shape == (2, 12, 8, 8)
    keys = models.build_model("x2ct_gan", SMALL_GAN).state_dict()
    assert "encoders.0.stages.1.1.denselayer2.layers.conv2.weight" in keys


def test_widths_seed_and_shipped():
    """The seed preset is the published generator (61.7 M parameters); the default width
    fits a 25 MB fp32 package. Built on the meta device: no memory, no time."""
    with torch.device("meta"):
        seed = models.build_model("x2ct_gan", {"preset": "seed"})
        compact = models.build_model("x2ct_gan")
        inr = models.build_model("cnn_inr")
    n_seed = sum(p.numel() for p in seed.parameters())
    assert abs(n_seed - 61.7e6) / 61.7e6 < 0.005, n_seed
    assert seed.spec.config["growth_rate"] == 32 and seed.spec.output_size == 128
    for m in (compact, inr):
        n = sum(p.numel() for p in m.parameters())
        assert 4 * n < 25e6, (m.spec.name, n)
    assert sum(p.numel() for p in compact.parameters()) > 1e6  # not a toy


# -------------------------------------------------------------------------------------------
# orientation: lifting a DRR back along its rays lands on the object that made it
# -------------------------------------------------------------------------------------------

def _bead_volume(spec, ijk):
    """A -1000 HU cube grid with one dense bead (2000 HU) centred on voxel ``ijk``."""
    grid = spec.grid()
    s = spec.output_size
    k, j, i = np.meshgrid(*(np.arange(s),) * 3, indexing="ij")
    r2 = (i - ijk[0]) ** 2 + (j - ijk[1]) ** 2 + (k - ijk[2]) ** 2
    return grid.with_array(np.where(r2 <= 1.5, 2000.0, -1000.0).astype(np.float32))


@pytest.mark.parametrize("mode,tol", [("perspective", 0), ("parallel", 1)])
def test_lifting_puts_the_drr_bright_spot_on_the_bead(mode, tol):
    m = models.build_model("x2ct_gan", {**SMALL_GAN, "lift": mode})
    spec = m.spec
    # left (+x), anterior (-y), superior (+z) of the centre: every flip would show
    ijk = (22, 10, 21)
    vol = _bead_volume(spec, ijk)
    hu = torch.from_numpy(vol.array)[None]
    images = drr.DRR(spec.projections(), vol)(hu)  # [1, 2, P, P]
    # the DRR itself: AP bright spot right of centre (patient's left) and above; lateral
    # spot right of centre (anterior) and above
    for v in range(2):
        r, c = np.unravel_index(int(images[0, v].argmax()), images.shape[2:])
        assert r < 15 and c > 16, (spec.views[v], r, c)
    lifted = m.lifter(images[:, :, None], spec.output_size)[0, :, 0]  # [V, z, y, x]
    i, j, k = ijk
    # AP is constant (parallel) or nearly (perspective) along y; its bright column is at the
    # bead's (z, x). Lateral: along x, bright at the bead's (z, y).
    ap_zx = np.unravel_index(int(lifted[0, :, j, :].argmax()), (32, 32))
    lat_zy = np.unravel_index(int(lifted[1, :, :, i].argmax()), (32, 32))
    assert abs(ap_zx[0] - k) <= tol and abs(ap_zx[1] - i) <= tol, ap_zx
    assert abs(lat_zy[0] - k) <= tol and abs(lat_zy[1] - j) <= tol, lat_zy
    if mode == "parallel":
        assert torch.allclose(lifted[0], lifted[0, :, :1, :].expand_as(lifted[0]))
        assert torch.allclose(lifted[1], lifted[1, :, :, :1].expand_as(lifted[1]))
    # both rays cross at the bead
    both = np.unravel_index(int((lifted[0] * lifted[1]).argmax()), (32, 32, 32))
    assert max(abs(both[0] - k), abs(both[1] - j), abs(both[2] - i)) <= tol, both


def test_lift_axis_coordinates_are_the_canonical_grid():
    """The lifter's voxel centres are the canonical grid's (one index <-> mm formula)."""
    lifter = ViewLifter(models.build_model("x2ct_gan", SMALL_GAN).spec.projections(), 256.0)
    for size in (8, 33):
        x, y, z = lifter.axis_coordinates(size)
        pts = canonical_grid(size, 256.0).voxel_points()  # [k, j, i] order
        k, j, i = np.unravel_index(np.arange(size ** 3), (size,) * 3)
        np.testing.assert_array_equal(pts, np.stack([x.numpy()[i], y.numpy()[j],
                                                     z.numpy()[k]], -1))


def test_perspective_lift_samples_the_projected_pixel():
    spec = models.build_model("x2ct_gan", SMALL_GAN).spec
    lifter = ViewLifter(spec.projections(), 256.0)
    grid = spec.grid(8)
    pts = grid.physical_points(np.stack(np.meshgrid(*(np.arange(8),) * 3, indexing="ij"),
                                        -1)[..., ::-1].reshape(-1, 3))  # (i, j, k), [k,j,i] order
    img = torch.rand(1, 2, 1, 32, 32, dtype=torch.float64)
    lifted = lifter(img, 8)[0, :, 0].reshape(2, -1)
    for v, g in enumerate(spec.projections()):
        rc = g.project(pts)
        inside = np.all((rc > 0) & (rc < 31), axis=1)
        r0, c0 = np.floor(rc[:, 0]).astype(int), np.floor(rc[:, 1]).astype(int)
        fr, fc = rc[:, 0] - r0, rc[:, 1] - c0
        a = img[0, v, 0].numpy()
        r0, c0 = np.clip(r0, 0, 30), np.clip(c0, 0, 30)
        ref = (a[r0, c0] * (1 - fr) * (1 - fc) + a[r0 + 1, c0] * fr * (1 - fc)
               + a[r0, c0 + 1] * (1 - fr) * fc + a[r0 + 1, c0 + 1] * fr * fc)
        assert inside.sum() > 100
        np.testing.assert_allclose(lifted[v].numpy()[inside], ref[inside], atol=1e-4)


# -------------------------------------------------------------------------------------------
# CNN-INR
# -------------------------------------------------------------------------------------------

def test_cnn_inr_projection_is_the_geometry():
    m = models.build_model("cnn_inr", SMALL_INR)
    rng = np.random.default_rng(1)
    pts = rng.uniform(-130, 130, size=(200, 3))
    rc = m.project(torch.from_numpy(pts)[None])[0]  # [V, N, 2]
    for v, g in enumerate(m.spec.projections()):
        np.testing.assert_allclose(rc[v].numpy(), g.project(pts), rtol=0, atol=1e-9)
    rc32 = m.project(torch.from_numpy(pts).float()[None])[0]
    np.testing.assert_allclose(rc32.numpy(), rc.numpy(), atol=2e-3)


def test_cnn_inr_renders_any_grid_in_chunks():
    torch.manual_seed(0)
    m = models.build_model("cnn_inr", SMALL_INR).eval()
    x = torch.rand(1, 2, 32, 32)
    grid = Volume(np.zeros((5, 7, 6), np.uint8), (3.0, 2.5, 4.0), (-10.0, 20.0, -7.0),
                  rotation_matrix((10, -20, 30)))
    with torch.no_grad():
        out = m.render(x, grid, chunk=17)
        kk, jj, ii = np.meshgrid(*(np.arange(n) for n in grid.array.shape), indexing="ij")
        pts = grid.physical_points(np.stack([ii, jj, kk], -1).reshape(-1, 3))
        ref = m.query(x, torch.from_numpy(pts).float()[None])
    assert out.shape == (1, 1, 5, 7, 6)
    np.testing.assert_allclose(out.reshape(-1).numpy(), ref[0].numpy(), atol=1e-5)
    assert float(out.std()) > 0  # the points differ


def test_cnn_inr_any_number_of_views():
    torch.manual_seed(0)
    m = models.build_model("cnn_inr", {**SMALL_INR, "views": ["ap", "lateral", "pa"],
                                       "shared_encoder": True})
    x = torch.rand(2, 3, 32, 32)
    pts = torch.rand(2, 50, 3) * 200 - 100
    assert m.query(x, pts).shape == (2, 50)
    one = m.query(x[:, 1:2], pts, view_names=["lateral"])
    assert one.shape == (2, 50) and torch.isfinite(one).all()
    with pytest.raises(ValueError, match="views"):
        m.query(x[:, :1], pts, view_names=["oblique"])
    single = models.build_model("cnn_inr", {**SMALL_INR, "views": ["ap"]})
    assert single(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32, 32)


def test_cnn_inr_uses_the_views():
    """Features come from where each point projects: changing a few image pixels changes the
    points whose rays pass near them, the others only through the instance norm's statistics."""
    torch.manual_seed(0)
    m = models.build_model("cnn_inr", {**SMALL_INR, "encoder_channels": []}).eval()
    x = torch.rand(1, 2, 32, 32)
    g = m.spec.projection("ap")
    pts = torch.tensor([[[0.0, 0.0, 0.0], [60.0, 0.0, 60.0]]], dtype=torch.float64)
    r, c = np.round(g.project(pts[0].numpy())[1]).astype(int)
    x2 = x.clone()
    x2[0, 0, r - 1:r + 2, c - 1:c + 2] += 5.0
    with torch.no_grad():
        a, b = m.query(x, pts.float()), m.query(x2, pts.float())
    far, near = abs(float(a[0, 0] - b[0, 0])), abs(float(a[0, 1] - b[0, 1]))
    assert near > 1e-4 and near > 5 * far, (near, far)


# -------------------------------------------------------------------------------------------
# discriminator, intensity, normalisation
# -------------------------------------------------------------------------------------------

def test_discriminator():
    gen = models.build_model("x2ct_gan", SMALL_GAN)
    d = models.build_discriminator(gen.spec.config)
    convs = [mod for mod in d.net.modules() if isinstance(mod, torch.nn.Conv3d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]  # 4 layers 2,2,2,1 + logits
    assert all(c.kernel_size == (4, 4, 4) for c in convs)
    assert convs[0].in_channels == 3  # volume + two lifted views
    vol, views = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 2, 32, 32)
    out = d(vol, views)
    assert out.shape == (2, 1, 2, 2, 2)
    assert len(d.features(vol, views)) == 5
    d1 = models.build_discriminator(models.build_model("x2ct_gan_single", SMALL_GAN).spec)
    assert d1(vol, views[:, :1]).shape == (2, 1, 2, 2, 2)
    with pytest.raises(ValueError):
        d(torch.rand(2, 1, 16, 16, 16), views)
    # the typed constructor: the same network; the config keys map onto its arguments
    torch.manual_seed(3)
    typed = models.ConditionalPatchDiscriminator(image_size=32, output_size=32, channels=64,
                                                 num_layers=3)
    torch.manual_seed(3)
    mapped = models.build_discriminator({**gen.spec.config, "disc_channels": 64})
    assert typed.spec == mapped.spec
    with torch.no_grad():
        assert torch.equal(typed(vol, views), mapped(vol, views))
    with pytest.raises(ValueError, match="no patch"):
        models.build_discriminator({**gen.spec.config, "disc_layers": 4})
    with pytest.raises(ValueError, match="channels"):
        models.ConditionalPatchDiscriminator(image_size=32, output_size=32, channels=0)


def test_intensity_mappings():
    comp = intensity.get_mapping("hu_compand")
    hu = np.linspace(-1000, 1000, 4001)
    x = comp.to_model(hu)
    assert x.min() == 0.0 and x.max() == 1.0 and np.all(np.diff(x) > 0)
    np.testing.assert_allclose(comp.to_hu(x), hu, atol=2e-3)
    t = torch.linspace(-1000, 1000, 4001, dtype=torch.float64, requires_grad=True)
    xt = comp.to_model(t)
    np.testing.assert_allclose(xt.detach().numpy(), x, atol=1e-6)
    np.testing.assert_allclose(comp.to_hu(xt).detach().numpy(), hu, atol=1e-9)
    xt.sum().backward()
    assert float(t.grad[2000 + 40]) > 5 * float(t.grad[2000 + 500])  # steep near brain
    # grey/white matter contrast survives
    assert comp.to_model(np.array([40.0]))[0] - comp.to_model(np.array([30.0]))[0] > 0.04
    assert comp.to_model(np.array([-3000.0, 3000.0])).tolist() == [0.0, 1.0]  # clipped
    brain = intensity.get_mapping("brain")
    np.testing.assert_allclose(brain.to_model(np.array([0.0, 20.0, 40.0, 60.0, 1000.0])),
                               [0, 0, 0.5, 1, 1])
    inside = np.linspace(20, 60, 41)
    np.testing.assert_allclose(brain.to_hu(brain.to_model(inside)), inside, atol=1e-4)
    assert brain.to_hu(torch.tensor([0.0, 1.0])).tolist() == [20.0, 60.0]
    with pytest.raises(ValueError):
        intensity.get_mapping("nope")


def test_normalize_views():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 32, 32) ** 2 * 7.0
    y = models.normalize_views(x)
    assert y.shape == x.shape and float(y.min()) == 0.0 and float(y.max()) == 1.0
    torch.testing.assert_close(models.normalize_views(3.5 * x + 12.0), y, atol=1e-5, rtol=0)
    flat = models.normalize_views(torch.full((1, 1, 8, 8), 4.0))
    assert float(flat.abs().max()) == 0.0
    with pytest.raises(ValueError):
        models.normalize_views(torch.rand(3, 8, 8))
