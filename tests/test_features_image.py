"""psqe.features.image: local weights, pooled output, folders and mappings, EVA's missing rule."""
from __future__ import annotations

import pytest
import torch

from psqe.features.image import ImageEncoder, build_backbone, fill_missing, images_in_folder

torchvision = pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), d / "resnet18.pth")
    g = torch.Generator().manual_seed(0)
    for i, size in zip((3, 5, 8), ((40, 30), (64, 64), (25, 50))):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(d / f"{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def make(assets, **kw) -> ImageEncoder:
    return ImageEncoder("resnet18", weights_path=assets / "resnet18.pth", image_size=64, progress=False, **kw)


def test_shape_presence_and_determinism(assets):
    table, present = make(assets).encode_entities([3, 5, 8, 9], assets, seed=0)
    assert table.shape == (4, 512) and table.dtype == torch.float32
    assert present.tolist() == [True, True, True, False]
    assert bool((table[:3] >= 0).all())  # pooled after ReLU
    again, _ = make(assets, batch_size=2).encode_entities([3, 5, 8, 9], assets, seed=0)
    torch.testing.assert_close(again, table, atol=1e-5, rtol=1e-5)
    assert not torch.equal(table[0], table[1])


def test_output_is_the_global_pool(assets):
    enc = make(assets)
    ref = torchvision.models.resnet18(weights=None)
    ref.load_state_dict(torch.load(assets / "resnet18.pth", weights_only=True))
    ref.fc = torch.nn.Identity()
    ref.eval()
    x = enc.transform(Image.open(assets / "5.png").convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        expected = ref(x)
    got, _ = enc.encode_files([assets / "5.png"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mapping_equals_folder(assets):
    enc = make(assets)
    by_folder, p1 = enc.encode_entities([5, 3, 100], assets, seed=1)
    by_map, p2 = enc.encode_entities([5, 3, 100], {3: assets / "3.png", 5: str(assets / "5.png")}, seed=1)
    torch.testing.assert_close(by_folder, by_map)
    assert p1.tolist() == p2.tolist() == [True, True, False]
    assert sorted(images_in_folder(assets)) == [3, 5, 8]


def test_unreadable_image_is_missing(assets, tmp_path, caplog):
    (tmp_path / "1.png").write_bytes(b"not a png")
    table, present = make(assets).encode_files([tmp_path / "1.png", assets / "3.png", None])
    assert present.tolist() == [False, True, False] and "unreadable" in caplog.text
    assert bool((table[0] == 0).all())


def test_fill_missing_follows_the_present_rows():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([5.0, -1.0, 0.0])
    present = torch.rand(4000, generator=g) < 0.5
    out = fill_missing(table, present, seed=3)
    assert torch.equal(out[present], table[present])
    filled = out[~present]
    torch.testing.assert_close(filled.mean(0), table[present].mean(0), atol=0.15, rtol=0)
    torch.testing.assert_close(filled.std(0), table[present].std(0), atol=0.1, rtol=0)
    assert torch.equal(fill_missing(table, present, seed=3), out)
    assert not torch.equal(fill_missing(table, present, seed=4), out)
    assert torch.equal(fill_missing(table, torch.ones(4000, dtype=torch.bool), 0), table)


def test_fill_missing_errors():
    with pytest.raises(ValueError, match="no row is present"):
        fill_missing(torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="present must be bool"):
        fill_missing(torch.zeros(3, 2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating"):
        fill_missing(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, dtype=torch.bool))


def test_weights_errors(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        build_backbone("resnet18", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="does not fit resnet34"):
        build_backbone("resnet34", assets / "resnet18.pth")
    with pytest.raises(ValueError, match="random_init=True"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="not a torchvision.models name"):
        build_backbone("resnet7")
    with pytest.raises(FileNotFoundError, match="image folder"):
        images_in_folder(tmp_path / "nowhere")


def test_other_architecture_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = torchvision.models.mobilenet_v3_small(weights=None)
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    enc = ImageEncoder("mobilenet_v3_small", weights_path=tmp_path / "m.safetensors", image_size=32, progress=False)
    Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / "7.jpg")
    table, present = enc.encode_entities([7], tmp_path)
    assert table.shape == (1, 1024) and present.tolist() == [True]
