"""The built-in ``nuclei-fluo`` model: proposed for fluorescence, it keeps dim, noisy nuclei."""

from pathlib import Path

import numpy as np

from napari_unet.core.catalog import list_models
from napari_unet.core.checkpoint import load_model
from napari_unet.core.engine import weights_key
from napari_unet.core.metrics import average_precision
from napari_unet.core.modality import MODEL_FOR
from napari_unet.core.predict import segment
from napari_unet.io import load_sample


def _camera_image(image: np.ndarray, truth: np.ndarray, photons: float, seed: int) -> np.ndarray:
    """``image`` as a camera that caught ``photons`` at the nuclei's 90th percentile writes it:
    shot noise, 2 photons of background, read noise of 3 e-, an offset of 100, uint16
    (``benchmarks/bench_noise.py``'s camera)."""
    background = float(np.median(image[truth == 0]))
    top = float(np.percentile(image[truth > 0], 90))
    signal = np.clip((image.astype(np.float64) - background) / (top - background), 0, None)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(signal * photons + 2.0) + rng.normal(100.0, 3.0, image.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def test_nuclei_fluo_is_a_builtin_model_with_its_card():
    names = [e.name for e in list_models() if e.builtin]
    assert names[0] == "nuclei" and "nuclei-fluo" in names  # the default stays first
    fluo, nuclei = load_model("nuclei-fluo", device="cpu"), load_model("nuclei", device="cpu")
    assert MODEL_FOR["fluorescence"] == "nuclei-fluo" and MODEL_FOR["colour"] == "nuclei"
    assert fluo.name == "nuclei-fluo" and fluo.diameter == nuclei.diameter == 17.0
    assert weights_key(fluo.net) != weights_key(nuclei.net)
    card = fluo.metadata["model_card"]
    assert card["val_auto_diameter"]["grey_dark"]["ap50"] > card["shipped_auto_diameter"]["grey_dark"]["ap50"]
    assert any(stage.get("augment_low_light") for stage in fluo.metadata["stages"])
    card_file = Path(fluo.metadata["path"]).with_name("MODEL_CARD_nuclei-fluo.md")
    text = card_file.read_text()
    assert card_file.is_file() and "--reproduce napari_unet/models/nuclei-fluo.pt" in text
    assert f"{card['val_auto_diameter']['grey_dark']['ap50']:.3f}" in text


def test_nuclei_fluo_finds_nuclei_in_low_light_where_nuclei_does_not():
    image, truth, _ = load_sample("nuclei_fluorescence_2d")
    dim = _camera_image(image, truth, photons=10, seed=0)  # nuclei still plain to the eye
    aps = {name: average_precision(truth, segment(load_model(name, device="cpu"), dim, device="cpu"))
           for name in ("nuclei", "nuclei-fluo")}
    assert aps["nuclei-fluo"] > 0.4 and aps["nuclei-fluo"] > aps["nuclei"] + 0.3, aps
    clean = {name: average_precision(truth, segment(load_model(name, device="cpu"), image, device="cpu"))
             for name in ("nuclei", "nuclei-fluo")}
    assert clean["nuclei-fluo"] > clean["nuclei"] - 0.05, clean


def test_a_builtin_model_exported_carries_its_own_card():
    from napari_unet.core.zoo_export import _card_text, _documentation, input_size_rule, package_halo

    for name, heading in (("nuclei-fluo", "### `nuclei-fluo`"), ("cells", "### ")):
        model = load_model(name, device="cpu")
        doc = _documentation(model, package_halo(model.net), input_size_rule(model.net), _card_text(model))
        card = Path(model.metadata["path"]).with_name(f"MODEL_CARD_{name}.md").read_text()
        assert "## Model card" in doc and heading in doc
        assert card.splitlines()[2][:60] in doc  # the card's first paragraph
        assert "\n# " not in doc.split("## Model card", 1)[1]  # its headings below the package's own
