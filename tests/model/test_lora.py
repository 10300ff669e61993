"""LoRAs on the tiny model: parsing, both file formats, switching sets per batch, errors, hub ids, hashes."""

import hashlib
import shutil
import struct

import numpy as np
import pytest

from pipeline.input.lora_refs import LoraRef, LoraSpecError, parse_lora_list
from pipeline.model import generate_rgba, load_model
from pipeline.model.lora import LoraAdapters, LoraError, count_adapter_layers, lora_set_key, resolve_lora
from pipeline.model.testing.tiny_lora import build_tiny_lora, lora_targets
from tests.model.files import KOHYA_LORA, Req, write_tensors

# One step without guidance (one UNet pass): these tests compare pixels, not quality.
ROW = [Req("a pixel-art sword", 7, num_inference_steps=1, guidance_scale=1.0)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERDIFFUSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lora_model(tiny_config):
    """A model of its own: loading adapters wraps its layers, which the shared session model must not see."""
    return load_model(tiny_config.model)


@pytest.fixture(scope="module")
def adapters(lora_model):
    return LoraAdapters(lora_model.pipe)


@pytest.fixture(scope="module")
def loras(lora_model, tmp_path_factory):
    """The same random factors (seed 1) in both formats, with alpha = rank / 2, and a second LoRA (seed 2)."""
    folder = tmp_path_factory.mktemp("loras")
    pipe = lora_model.pipe
    return {
        "kohya": build_tiny_lora(pipe, folder / "pixel-kohya.safetensors", "kohya", seed=1),
        "peft": build_tiny_lora(pipe, folder / "pixel-peft.safetensors", "peft", seed=1),
        "other": build_tiny_lora(pipe, folder / "icons.safetensors", "kohya", seed=2),
        "kohya_half": build_tiny_lora(pipe, folder / "half-kohya.safetensors", "kohya", seed=1, alpha=2),
    }


def render(model, adapters, *specs) -> np.ndarray:
    adapters.activate([resolve_lora(LoraRef.parse(str(s))) for s in specs])
    return generate_rgba(model, ROW, tta=False)


@pytest.fixture(scope="module")
def plain(lora_model, adapters):
    return render(lora_model, adapters)


@pytest.mark.parametrize(
    ("spec", "source", "weight"),
    [
        ("style.safetensors", "style.safetensors", 1.0),
        ("style.safetensors:0.8", "style.safetensors", 0.8),
        (" loras/style.safetensors : -0.5 ", "loras/style.safetensors", -0.5),
        ("style.safetensors:1e-1", "style.safetensors", 0.1),
        ("C:\\loras\\style.safetensors", "C:\\loras\\style.safetensors", 1.0),
        ("C:\\loras\\style.safetensors:0.25", "C:\\loras\\style.safetensors", 0.25),
        ("nerijs/pixel-art-xl", "nerijs/pixel-art-xl", 1.0),
        ("nerijs/pixel-art-xl/pixel-art-xl.safetensors:2", "nerijs/pixel-art-xl/pixel-art-xl.safetensors", 2.0),
        ("v:2:1", "v:2", 1.0),
    ],
)
def test_lora_references_parse(spec, source, weight):
    assert LoraRef.parse(spec) == LoraRef(source, weight)


def test_lora_lists_and_bad_references():
    assert parse_lora_list("a.safetensors:0.5; b.safetensors;") == (
        LoraRef("a.safetensors", 0.5),
        LoraRef("b.safetensors"),
    )
    assert parse_lora_list("") == () and parse_lora_list(None) == ()
    with pytest.raises(LoraSpecError, match="no file or hub id"):
        LoraRef.parse(":0.5")
    with pytest.raises(LoraSpecError, match="not a finite number"):
        LoraRef.parse("a.safetensors:1e999")


def test_weight_zero_is_pixel_identical_and_weight_one_changes_pixels(lora_model, adapters, loras, plain):
    zero = render(lora_model, adapters, f"{loras['kohya']}:0")
    one = render(lora_model, adapters, f"{loras['kohya']}:1")
    assert zero.tobytes() == plain.tobytes()
    assert np.abs(one.astype(int) - plain).max() > 10
    assert adapters.active and count_adapter_layers(lora_model.pipe.unet, adapters.active[0][0]) > 0


def test_kohya_and_peft_files_with_the_same_weights_give_the_same_image(lora_model, adapters, loras, plain):
    """Exactly equal: both load into the same PEFT layers with the same factors and scale."""
    kohya = render(lora_model, adapters, f"{loras['kohya']}:0.75")
    peft = render(lora_model, adapters, f"{loras['peft']}:0.75")
    assert kohya.tobytes() == peft.tobytes() and kohya.tobytes() != plain.tobytes()
    # kohya's alpha: alpha = rank / 2 at weight 1 is the PEFT file at weight 0.5 (both scale by 0.5)
    half_kohya = render(lora_model, adapters, loras["kohya_half"])
    half_peft = render(lora_model, adapters, f"{loras['peft']}:0.5")
    assert half_kohya.tobytes() == half_peft.tobytes() != kohya.tobytes()


def test_switching_sets_between_batches_and_back(lora_model, adapters, loras, plain):
    first = render(lora_model, adapters, loras["kohya"])
    both = render(lora_model, adapters, loras["kohya"], f"{loras['other']}:0.5")
    assert len({first.tobytes(), both.tobytes(), plain.tobytes()}) == 3
    assert render(lora_model, adapters).tobytes() == plain.tobytes()
    assert render(lora_model, adapters, loras["kohya"]).tobytes() == first.tobytes()
    # a set is a set: the order it is written in does not change a bit
    assert render(lora_model, adapters, f"{loras['other']}:0.5", loras["kohya"]).tobytes() == both.tobytes()


def test_layerdiffuse_weights_stay_untouched_under_adapters(lora_model, adapters, loras, tiny_model):
    adapters.activate([resolve_lora(LoraRef(str(loras["kohya"])))])
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    wrapped = lora_model.pipe.unet.get_submodule(key).base_layer.weight
    assert wrapped.equal(tiny_model.pipe.unet.get_submodule(key).weight)  # LayerDiffuse-merged, bit for bit


def test_least_recently_used_adapters_are_unloaded(tiny_config, tmp_path):
    model = load_model(tiny_config.model)  # its own: another adapter cache must not share a pipeline
    plain = generate_rgba(model, ROW, tta=False)
    cache = LoraAdapters(model.pipe, max_loaded=2)
    paths = [build_tiny_lora(model.pipe, tmp_path / f"l{seed}.safetensors", seed=seed) for seed in (3, 4, 5)]
    for path in paths:
        cache.activate([resolve_lora(LoraRef(str(path)))])
    assert len(model.pipe.get_list_adapters()["unet"]) == 2
    assert cache.active and cache.active[0][0] in model.pipe.get_list_adapters()["unet"]
    cache.activate([])
    assert generate_rgba(model, ROW, tta=False).tobytes() == plain.tobytes()


def test_missing_corrupt_and_non_lora_files_are_clear_errors(tmp_path, tiny_model_dir, loras):
    with pytest.raises(LoraError, match=r"LoRA .*nowhere.safetensors: no such file"):
        resolve_lora(LoraRef(str(tmp_path / "nowhere.safetensors")))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(loras["kohya"].read_bytes()[:5000])
    with pytest.raises(LoraError, match="truncated"):
        resolve_lora(LoraRef(str(cut)))
    with pytest.raises(LoraError, match="is an SDXL checkpoint, not a LoRA"):
        resolve_lora(LoraRef(str(tiny_model_dir / "sdxl-tiny.safetensors")))
    loha = write_tensors(
        tmp_path / "loha.safetensors", {"lora_unet_x.hada_w1_a": (4, 8), "lora_unet_x.hada_w1_b": (4, 8)}
    )
    with pytest.raises(LoraError, match="LyCORIS LoHa"):
        resolve_lora(LoraRef(str(loha)))


def test_loras_for_other_architectures_are_refused(tmp_path, lora_model, adapters, plain):
    sd15 = write_tensors(
        tmp_path / "sd15.safetensors",
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
         "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4),
         "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
         "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4)},
        metadata={"ss_base_model_version": "sd_v1"},
    )  # fmt: skip
    with pytest.raises(LoraError, match=r"Stable Diffusion 1.x/2.x \(one text encoder.*'sd_v1'.*needed: a LoRA"):
        resolve_lora(LoraRef(str(sd15)))
    # SDXL names, other widths (a LoRA for a larger SDXL-like model): caught when loading
    wide = write_tensors(tmp_path / "wide.safetensors", {k: (v[0] * 2, v[1] * 2) for k, v in KOHYA_LORA.items()})
    with pytest.raises(LoraError, match=r"wide.safetensors \(a kohya-format LoRA with 1 layer\) does not fit"):
        adapters.activate([resolve_lora(LoraRef(str(wide)))])
    # names that land nowhere in SDXL: detected, not silently ignored
    layers = ("lora_unet_input_blocks_4_1_proj_in", "lora_unet_input_blocks_4_1_no_such_layer")
    shapes = {
        f"{layer}.lora_{part}.weight": shape for layer in layers for part, shape in (("down", (4, 32)), ("up", (32, 4)))
    }
    nowhere = write_tensors(tmp_path / "nowhere.safetensors", shapes)
    with pytest.raises(LoraError, match="only 1 of its 2 layers match"):
        adapters.activate([resolve_lora(LoraRef(str(nowhere)))])
    assert render(lora_model, adapters).tobytes() == plain.tobytes()  # a refused LoRA leaves nothing behind


def test_hub_ids_resolve_through_the_hugging_face_cache(tmp_path, loras, monkeypatch):
    """A cache laid out as huggingface_hub writes it (refs/main -> snapshot), read offline."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--pixel-team--pixel-art-xl"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copy(loras["kohya"], snapshot / "pixel-art-xl.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    by_repo = resolve_lora(LoraRef.parse("pixel-team/pixel-art-xl:0.8"))
    by_file = resolve_lora(LoraRef.parse("pixel-team/pixel-art-xl/pixel-art-xl.safetensors"))
    assert by_repo.path == by_file.path == str(snapshot / "pixel-art-xl.safetensors")
    assert by_repo.name == "pixel-art-xl" and by_repo.weight == 0.8
    local = resolve_lora(LoraRef(str(loras["kohya"]), 0.8))
    assert by_repo.identity == local.identity  # the same content: the same identity, wherever it lives
    with pytest.raises(LoraError, match="pixel-team/other-lora: hub repo not in the Hugging Face cache"):
        resolve_lora(LoraRef.parse("pixel-team/other-lora"))


def test_identity_and_automatic1111_hashes(tmp_path, loras):
    from safetensors.torch import load_file, save_file

    from pipeline.model.provenance import a1111_fields, lora_prompt_tags, lora_record

    path = loras["kohya"]
    lora = resolve_lora(LoraRef(str(path), 0.8))
    data = path.read_bytes()
    header_length = struct.unpack("<Q", data[:8])[0]
    tensor_hash = hashlib.sha256(data[8 + header_length :]).hexdigest()
    assert lora.identity == {"sha256": hashlib.sha256(data).hexdigest(), "weight": 0.8}
    assert a1111_fields(loras=[lora]) == [("Lora hashes", f'"pixel-kohya: {tensor_hash[:12]}"')]
    assert lora_prompt_tags([lora]) == "<lora:pixel-kohya:0.8>"
    # new metadata: another file (another identity), the same tensors (the same AUTOMATIC1111 hash)
    relabelled = tmp_path / "relabelled.safetensors"
    save_file(load_file(path), relabelled, metadata={"ss_output_name": "pixel"})
    other = resolve_lora(LoraRef(str(relabelled), 0.8))
    assert other.identity != lora.identity
    assert lora_record(other)["a1111_hash"] == tensor_hash[:12]
    assert resolve_lora(LoraRef(str(path), 0.5)).identity != lora.identity


def test_lora_set_key_ignores_order_and_keeps_zero_weights(loras):
    a, b = (resolve_lora(LoraRef(str(loras[n]), w)) for n, w in (("kohya", 1.0), ("other", 0.5)))
    zero = resolve_lora(LoraRef(str(loras["kohya"]), 0.0))
    assert lora_set_key([a, b]) == lora_set_key([b, a]) != lora_set_key([a])
    assert lora_set_key([zero]) != lora_set_key([]) == ()


def test_tiny_lora_targets_the_unet_and_both_text_encoders(lora_model):
    components = {component for component, _, _ in lora_targets(lora_model.pipe)}
    assert components == {"unet", "text_encoder", "text_encoder_2"}
