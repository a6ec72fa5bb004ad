"""Recipes, the loader, the tiny self-test model, and the transformers 5 tokenizer trap."""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch

from framepack.encoders import PROMPT_TEMPLATE, encode_prompt, template_crop_start
from framepack.models import loader as loader_module
from framepack.models.loader import ModelUnavailableError, check_available, load_component, load_components
from framepack.models.recipe import (
    COMPONENT_NAMES,
    ComponentSource,
    Recipe,
    RecipeError,
    default_recipe,
    load_recipe,
    recipe_from_json,
    recipe_from_text,
    recipe_to_json,
    recipe_to_text,
    tiny_recipe,
)
from framepack.models.tiny import SELF_TEST_MARKER, write_tiny_model

HUNYUAN = "hunyuanvideo-community/HunyuanVideo"
REDUX = "lllyasviel/flux_redux_bfl"
NOT_CACHED_REPO = "framepack-tests/not-a-real-repo"
PROMPT_A = "a cat walks on the grass"
PROMPT_B = "a dog runs in the snow"


# ---------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    ("variant", "transformer_repo"),
    [("bidirectional", "lllyasviel/FramePackI2V_HY"), ("f1", "lllyasviel/FramePack_F1_I2V_HY_20250503")],
)
def test_default_recipe_names_the_published_repos(variant: str, transformer_repo: str) -> None:
    recipe = default_recipe(variant)
    assert recipe.transformer == ComponentSource(transformer_repo, None, "bfloat16")
    for name in ("vae", "text_encoder", "text_encoder_2"):
        assert recipe.component(name) == ComponentSource(HUNYUAN, name, "float16")
    for name in ("tokenizer", "tokenizer_2"):
        assert recipe.component(name) == ComponentSource(HUNYUAN, name, None)
    assert recipe.image_encoder == ComponentSource(REDUX, "image_encoder", "float16")
    assert recipe.feature_extractor == ComponentSource(REDUX, "feature_extractor", None)
    assert recipe.self_test is False


def test_unknown_variant_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="bidirectional, f1"):
        default_recipe("f2")


def test_tiny_recipe_points_every_component_at_its_subfolder(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    assert recipe.self_test is True
    for name, source in recipe.items():
        assert (source.source, source.subfolder) == (str(tmp_path), name)
        assert source.is_local
    assert recipe.transformer.dtype == "float32"
    assert recipe.tokenizer.dtype is None


@pytest.mark.parametrize(
    "recipe",
    [default_recipe("bidirectional"), default_recipe("f1"), tiny_recipe("/models/my tiny model")],
    ids=["bidirectional", "f1", "tiny-with-space"],
)
def test_text_and_json_round_trips_are_exact(recipe: Recipe) -> None:
    text = recipe_to_text(recipe)
    assert recipe_from_text(text) == recipe
    assert recipe_to_text(recipe_from_text(text)) == text
    as_json = recipe_to_json(recipe)
    assert recipe_from_json(as_json) == recipe
    assert recipe_to_json(recipe_from_json(as_json)) == as_json


def test_text_form_looks_like_the_documented_lines() -> None:
    lines = recipe_to_text(default_recipe("bidirectional")).splitlines()
    assert lines[0] == "transformer: lllyasviel/FramePackI2V_HY dtype=bfloat16"
    assert lines[1] == "vae: hunyuanvideo-community/HunyuanVideo subfolder=vae dtype=float16"
    assert [line.split(":")[0] for line in lines] == list(COMPONENT_NAMES)


def test_text_lines_override_only_the_components_they_name() -> None:
    text = "# my recipe\n\n  vae: /models/vae dtype=float32   # local VAE\n"
    recipe = recipe_from_text(text, base=default_recipe("f1"))
    assert recipe.vae == ComponentSource("/models/vae", None, "float32")
    assert recipe.replace(vae=default_recipe("f1").vae) == default_recipe("f1")
    assert recipe_from_text("") == default_recipe("bidirectional")


def test_sdnext_short_forms_parse_to_repo_and_subfolder() -> None:
    recipe = recipe_from_text(
        "text_encoder: Kijai/llava-llama-3-8b-text-encoder-tokenizer/\n"
        "vae: hunyuanvideo-community/HunyuanVideo/vae\n"
        "image_encoder: lllyasviel/flux_redux_bfl/image_encoder dtype=bfloat16\n"
    )
    assert recipe.text_encoder == ComponentSource("Kijai/llava-llama-3-8b-text-encoder-tokenizer", None, None)
    assert recipe.vae == ComponentSource(HUNYUAN, "vae", None)
    assert recipe.image_encoder == ComponentSource(REDUX, "image_encoder", "bfloat16")
    assert recipe_from_json('{"vae": "hunyuanvideo-community/HunyuanVideo/vae"}').vae == recipe.vae


def test_short_form_is_not_applied_to_an_existing_local_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "models" / "HunyuanVideo" / "vae").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    recipe = recipe_from_text("vae: models/HunyuanVideo/vae")
    assert recipe.vae == ComponentSource("models/HunyuanVideo/vae", None, None)
    assert recipe.vae.is_local


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("vae: a/b\nvea: a/b", ["line 2", "'vea'", "transformer, vae, text_encoder"]),
        ("vae: a/b dtype=float8", ["line 1", "float8", "float32, float16, bfloat16"]),
        ("\n\nvae:", ["line 3", "vae", "missing source"]),
        ("vae: dtype=float16", ["line 1", "missing source"]),
        ("just some words", ["line 1", "component: source"]),
        ("vae: a/b dtpye=float16", ["line 1", "'dtpye'", "subfolder, dtype"]),
        ("tokenizer: a/b dtype=float16", ["line 1", "tokenizer", "no dtype"]),
        ("vae: a/b\nvae: c/d", ["line 2", "line 1"]),
        ("self_test: maybe", ["line 1", "true or false"]),
        ("transformer: a/b quantize=nf4", ["line 1", "'nf4'", "allowed: int8, float8, int4"]),
        ("transformer: a/b quantize=INT8", ["'INT8'", "int8, float8, int4"]),
        (
            "tokenizer: a/b quantize=int8",
            ["tokenizer", "no quantize", "transformer, vae, text_encoder, text_encoder_2, image_encoder"],
        ),
        ("feature_extractor: a/b quantize=float8", ["feature_extractor", "allowed on transformer"]),
        ("vae: a/b quantize=", ["'quantize' has no value"]),
        ("vae: a/b dtype=float8", ["float32, float16, bfloat16", "quantize=float8"]),
        ("vae: a/b quantise=int8", ["'quantise'", "subfolder, dtype, quantize"]),
    ],
)
def test_bad_text_lines_raise_recipe_error_with_line_and_allowed_values(text: str, fragments: list[str]) -> None:
    with pytest.raises(RecipeError) as caught:
        recipe_from_text(text)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "must be an object"),
        ('{"vea": {"source": "a/b"}}', "transformer, vae"),
        ('{"vae": {"source": "a/b", "dtype": "half"}}', "float32, float16, bfloat16"),
        ('{"vae": {"src": "a/b"}}', "source, subfolder, dtype"),
        ('{"vae": {"subfolder": "vae"}}', "missing source"),
        ('{"self_test": "yes"}', "true or false"),
        ('{"vae": ', "recipe JSON line 1"),
        ('{"transformer": {"source": "a/b", "quantize": "fp8"}}', "allowed: int8, float8, int4"),
        ('{"transformer": {"source": "a/b", "quantize": 8}}', "quantize must be a string or null"),
        ('{"tokenizer_2": {"source": "a/b", "quantize": "int8"}}', "quantize is allowed on transformer, vae"),
        ('{"vae": {"source": "a/b", "quant": "int8"}}', "source, subfolder, dtype, quantize"),
    ],
)
def test_bad_json_raises_recipe_error(text: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as caught:
        recipe_from_json(text)
    assert fragment in str(caught.value)


def test_load_recipe_picks_json_or_text_and_reads_files(tmp_path: Path) -> None:
    expected = default_recipe("bidirectional").replace(vae=ComponentSource("/models/vae", None, None))
    text_file = tmp_path / "recipe.txt"
    text_file.write_text("vae: /models/vae\n", encoding="utf-8")
    json_file = tmp_path / "recipe.json"
    json_file.write_text('{"vae": {"source": "/models/vae"}}', encoding="utf-8")
    assert load_recipe("vae: /models/vae") == expected
    assert load_recipe('{"vae": {"source": "/models/vae"}}') == expected
    assert load_recipe(text_file) == expected
    assert load_recipe(str(json_file)) == expected
    assert load_recipe(recipe_to_json(tiny_recipe(tmp_path))) == tiny_recipe(tmp_path)


def test_with_dtype_changes_only_weighted_components() -> None:
    recipe = default_recipe("bidirectional").with_dtype("float32")
    assert {recipe.component(n).dtype for n in ("transformer", "vae", "text_encoder", "image_encoder")} == {"float32"}
    assert recipe.tokenizer.dtype is None and recipe.feature_extractor.dtype is None


# ---------------------------------------------------------------------------------------------- tiny model


def test_tiny_model_folder_has_diffusers_layout_and_self_test_labels(tiny_model_dir: Path) -> None:
    for name in (*COMPONENT_NAMES, "scheduler"):
        assert (tiny_model_dir / name).is_dir(), name
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoFramepackPipeline"
    assert index["transformer"] == ["diffusers", "HunyuanVideoFramepackTransformer3DModel"]
    assert json.loads((tiny_model_dir / SELF_TEST_MARKER).read_text())["self_test"] is True
    assert "SELF-TEST" in (tiny_model_dir / "README.md").read_text()
    scheduler = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["use_dynamic_shifting"] is True
    assert (scheduler["base_image_seq_len"], scheduler["max_image_seq_len"]) == (256, 4096)
    assert (scheduler["base_shift"], scheduler["max_shift"], scheduler["shift"]) == (0.5, 1.15, 1.0)
    # The hub's class name, so that a naive load falls into the trap and the tests below can tell.
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizerFast"


def test_tiny_model_is_deterministic_given_the_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = Path("transformer") / "diffusion_pytorch_model.safetensors"
    same = write_tiny_model(tmp_path / "same", seed=0)
    other = write_tiny_model(tmp_path / "other", seed=1)
    assert (same / weights).read_bytes() == (tiny_model_dir / weights).read_bytes()
    assert (other / weights).read_bytes() != (tiny_model_dir / weights).read_bytes()


def test_tiny_components_load_with_the_right_classes_and_wiring(tiny_components) -> None:
    c = tiny_components
    expected = {
        "transformer": "HunyuanVideoFramepackTransformer3DModel",
        "vae": "AutoencoderKLHunyuanVideo",
        "text_encoder": "LlamaModel",
        "text_encoder_2": "CLIPTextModel",
        "tokenizer_2": "CLIPTokenizer",
        "image_encoder": "SiglipVisionModel",
    }
    for name, class_name in expected.items():
        assert type(getattr(c, name)).__name__ == class_name
    assert type(c.tokenizer).__name__ != "LlamaTokenizer"  # the trap's class
    assert type(c.feature_extractor).__name__.startswith("SiglipImageProcessor")
    assert c.self_test is True and c.variant == "bidirectional"
    for module in (c.transformer, c.vae, c.text_encoder, c.text_encoder_2, c.image_encoder):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
        assert next(module.parameters()).dtype == torch.float32
    assert c.device == torch.device("cpu")
    assert (c.latent_channels, c.spatial_scale, c.temporal_scale) == (4, 8, 4)
    assert c.vae.config.latent_channels == c.latent_channels
    config = c.transformer.config
    assert config.text_embed_dim == c.text_encoder.config.hidden_size
    assert config.pooled_projection_dim == c.text_encoder_2.config.hidden_size
    assert config.image_proj_dim == c.image_encoder.config.hidden_size
    assert sum(config.rope_axes_dim) == config.attention_head_dim
    assert c.tokenizer.padding_side == "right" and c.tokenizer.pad_token == "<|end_of_text|>"
    assert len(c.tokenizer) == c.text_encoder.config.vocab_size
    assert len(c.tokenizer_2) == c.text_encoder_2.config.vocab_size


def test_tiny_vae_decodes_a_section_to_4x_frames(tiny_components) -> None:
    latents = torch.randn(1, 4, 10, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pixels = tiny_components.vae.decode(latents).sample
    assert pixels.shape == (1, 3, 37, 64, 64)


def test_clip_tokenizer_gives_different_ids_for_different_words(tiny_components) -> None:
    tokenizer = tiny_components.tokenizer_2
    cat, dog = tokenizer("cat").input_ids, tokenizer("dog").input_ids
    assert cat != dog
    assert tokenizer.decode(tokenizer("A Quick test, 123!").input_ids, skip_special_tokens=True) != ""


def test_load_components_reports_progress_and_reads_the_marker(tiny_model_dir: Path) -> None:
    messages: list[str] = []
    recipe = tiny_recipe(tiny_model_dir).replace(self_test=False)
    components = load_components(recipe, variant="f1", on_progress=messages.append)
    assert len(messages) == len(COMPONENT_NAMES)
    assert all(name in message for name, message in zip(COMPONENT_NAMES, messages))
    assert components.self_test is True  # from framepack_self_test.json
    assert components.variant == "f1"


def test_diffusers_pipeline_loads_the_tiny_model(tiny_model_dir: Path) -> None:
    from diffusers import HunyuanVideoFramepackPipeline

    pipe = HunyuanVideoFramepackPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    assert type(pipe.transformer).__name__ == "HunyuanVideoFramepackTransformer3DModel"
    assert pipe.scheduler.config.use_dynamic_shifting is True
    ids = pipe.tokenizer(PROMPT_A, add_special_tokens=False).input_ids
    assert pipe.tokenizer.decode(ids) == PROMPT_A  # model_index names a class that honours tokenizer.json


# ---------------------------------------------------------------------------------------------- unavailable


def test_missing_local_folder_raises_naming_component_and_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vae"
    recipe = tiny_recipe(tiny_model_dir).replace(vae=ComponentSource(str(missing), None, "float32"))
    with pytest.raises(ModelUnavailableError) as caught:
        load_components(recipe)
    error = caught.value
    assert error.component == "vae" and error.source.source == str(missing)
    assert "vae" in str(error) and str(missing) in str(error) and "recipe line" in str(error)


def test_incomplete_local_folders_raise_instead_of_loading_empty(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer_2").mkdir()  # CLIPTokenizer.from_pretrained would "load" this as an empty tokenizer
    with pytest.raises(ModelUnavailableError, match="vocab.json"):
        load_component("tokenizer_2", ComponentSource(str(tmp_path), "tokenizer_2"))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text((tiny_model_dir / "vae" / "config.json").read_text())
    with pytest.raises(ModelUnavailableError, match="diffusion_pytorch_model.safetensors"):
        load_component("vae", ComponentSource(str(tmp_path), "vae", "float32"))


def test_corrupt_weights_raise_model_unavailable(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "text_encoder" / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailableError, match="text_encoder"):
        load_component("text_encoder", ComponentSource(str(folder), None, "float32"))


def test_uncached_hub_repo_offline_raises_quickly(tiny_model_dir: Path) -> None:
    assert huggingface_hub.is_offline_mode(), "conftest must put the hub in offline mode"
    recipe = tiny_recipe(tiny_model_dir).replace(text_encoder=ComponentSource(NOT_CACHED_REPO, "text_encoder"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as caught:
        load_components(recipe)
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert caught.value.component == "text_encoder"
    assert NOT_CACHED_REPO in message and "subfolder text_encoder" in message
    assert huggingface_hub.constants.HF_HUB_CACHE in message
    assert f"hf download {NOT_CACHED_REPO}" in message and "HF_HUB_OFFLINE" in message


def test_uncached_hub_repo_without_a_network_raises_at_once_not_after_the_hub_clients_retries(
    tiny_model_dir: Path, monkeypatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # online mode ...
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # ... with no hub to reach

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing is loaded when a component cannot be had")

    for spec in loader_module.LOADERS.values():
        monkeypatch.setattr(spec.cls, "from_pretrained", forbidden)
    recipe = tiny_recipe(tiny_model_dir).replace(text_encoder=ComponentSource(NOT_CACHED_REPO, "text_encoder"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as caught:
        load_components(recipe)
    assert time.perf_counter() - start < 5
    assert caught.value.component == "text_encoder"
    assert "it is not in the cache and 127.0.0.1:9 cannot be reached from here" in str(caught.value)
    assert f"hf download {NOT_CACHED_REPO}" in str(caught.value)


def test_check_available_reports_missing_components_without_loading(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("check_available must not load anything")

    for spec in loader_module.LOADERS.values():
        monkeypatch.setattr(spec.cls, "from_pretrained", forbidden)
    assert check_available(tiny_recipe(tiny_model_dir)) == []
    recipe = tiny_recipe(tiny_model_dir).replace(
        vae=ComponentSource(str(tmp_path / "missing"), None, "float32"),
        transformer=ComponentSource(NOT_CACHED_REPO, None, "bfloat16"),
    )
    errors = check_available(recipe)
    assert [error.component for error in errors] == ["transformer", "vae"]
    assert NOT_CACHED_REPO in str(errors[0]) and str(tmp_path / "missing") in str(errors[1])
    uncached = recipe_from_text("\n".join(f"{name}: {NOT_CACHED_REPO}/{name}" for name in COMPONENT_NAMES))
    assert [error.component for error in check_available(uncached)] == list(COMPONENT_NAMES)


# ---------------------------------------------------------------------------------------------- tokenizer trap


def test_different_prompts_give_different_llama_embeddings(tiny_components) -> None:
    a = encode_prompt(tiny_components, PROMPT_A, "cpu", torch.float32)
    b = encode_prompt(tiny_components, PROMPT_B, "cpu", torch.float32)
    length = int(min(a.mask.sum(), b.mask.sum()))
    assert length > 1
    assert not torch.allclose(a.llama[:, :length], b.llama[:, :length])
    assert not torch.allclose(a.pooled, b.pooled)
    same = encode_prompt(tiny_components, PROMPT_A, "cpu", torch.float32)
    assert torch.equal(a.llama, same.llama)
    # Prompts that differ only in spaces: the trapped (Metaspace) tokenizer drops spaces and gives the same ids.
    spaced = encode_prompt(tiny_components, "a cat", "cpu", torch.float32)
    joined = encode_prompt(tiny_components, "acat", "cpu", torch.float32)
    assert not (torch.equal(spaced.mask, joined.mask) and torch.allclose(spaced.llama, joined.llama))


def test_template_crop_lands_on_the_first_prompt_token(tiny_components) -> None:
    tokenizer = tiny_components.tokenizer
    crop = template_crop_start(tokenizer)
    full = tokenizer(PROMPT_TEMPLATE.format(PROMPT_A)).input_ids
    prompt_ids = tokenizer(PROMPT_A, add_special_tokens=False).input_ids
    assert full[crop] == prompt_ids[0]
    assert full[crop : crop + len(prompt_ids)] == prompt_ids
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    assert full[0] == tokenizer.bos_token_id
    assert tokenizer.decode(full[1:crop]) == prefix
    embeds = encode_prompt(tiny_components, PROMPT_A, "cpu", torch.float32)
    assert int(embeds.mask.sum()) == len(prompt_ids) + 1  # the prompt and the closing <|eot_id|>


def test_prompt_spaces_survive_tokenization(tiny_components) -> None:
    tokenizer = tiny_components.tokenizer
    for prompt in (PROMPT_A, "  two  spaces and\ttab", "Ünïcode ✓ works"):
        assert tokenizer.decode(tokenizer(prompt, add_special_tokens=False).input_ids) == prompt


def test_the_naive_transformers_load_falls_into_the_trap(tiny_components, tiny_model_dir: Path) -> None:
    """Shows the trap exists here, so the tests above are the ones that would catch a regression."""
    import transformers

    naive = transformers.LlamaTokenizerFast.from_pretrained(tiny_model_dir / "tokenizer")
    decoded = naive.decode(naive(PROMPT_A, add_special_tokens=False).input_ids)
    loses_spaces = decoded != PROMPT_A
    crop_differs = template_crop_start(naive) != template_crop_start(tiny_components.tokenizer)
    if not (loses_spaces or crop_differs):
        pytest.skip(
            f"transformers {transformers.__version__}: LlamaTokenizerFast.from_pretrained now honours tokenizer.json "
            f"(decoded {decoded!r}, same crop); the trap does not reproduce in this version"
        )
    assert loses_spaces, f"naive load decoded {decoded!r}"
    assert crop_differs


# ---------------------------------------------------------------------------------------------- recipes: quantize


def test_quantize_option_parses_in_text_and_json_and_round_trips() -> None:
    recipe = recipe_from_text(
        "transformer: lllyasviel/FramePackI2V_HY dtype=bfloat16 quantize=float8\n"
        "text_encoder: hunyuanvideo-community/HunyuanVideo/text_encoder quantize=int8\n"
    )
    assert recipe.transformer == ComponentSource("lllyasviel/FramePackI2V_HY", None, "bfloat16", "float8")
    assert recipe.text_encoder == ComponentSource(HUNYUAN, "text_encoder", None, "int8")
    assert recipe.vae == default_recipe("bidirectional").vae and recipe.vae.quantize is None
    text = recipe_to_text(recipe)
    assert "transformer: lllyasviel/FramePackI2V_HY dtype=bfloat16 quantize=float8\n" in text
    assert recipe_from_text(text) == recipe and recipe_to_text(recipe_from_text(text)) == text
    as_json = recipe_to_json(recipe)
    assert json.loads(as_json)["transformer"]["quantize"] == "float8" and json.loads(as_json)["vae"]["quantize"] is None
    assert recipe_from_json(as_json) == recipe and recipe_to_json(recipe_from_json(as_json)) == as_json
    assert load_recipe(as_json) == load_recipe(text) == recipe
    assert recipe_from_json('{"vae": {"source": "/m/vae", "quantize": "int4"}}').vae == ComponentSource(
        "/m/vae", None, None, "int4"
    )
    assert recipe_from_json('{"vae": "/m/vae dtype=float16 quantize=int8"}').vae == ComponentSource(
        "/m/vae", None, "float16", "int8"
    )
    # with_dtype changes the dtype only; a tiny recipe with a quantized transformer round-trips too
    assert recipe.with_dtype("float32").transformer.quantize == "float8"
    tiny = tiny_recipe("/models/tiny").replace(
        transformer=ComponentSource("/models/tiny", "transformer", "float32", "int8")
    )
    assert recipe_from_text(recipe_to_text(tiny)) == tiny and recipe_from_json(recipe_to_json(tiny)) == tiny


def test_default_recipes_have_no_quantization(tmp_path: Path) -> None:
    for recipe in (default_recipe("bidirectional"), default_recipe("f1"), tiny_recipe(tmp_path)):
        assert all(source.quantize is None for _name, source in recipe.items())
        assert "quantize" not in recipe_to_text(recipe)


def test_quantize_is_checked_on_direct_construction_too() -> None:
    with pytest.raises(RecipeError, match="allowed: int8, float8, int4"):
        ComponentSource("a/b", quantize="int2")
    with pytest.raises(RecipeError, match="tokenizer has no weights, so no quantize"):
        default_recipe("bidirectional").replace(tokenizer=ComponentSource("a/b", "tokenizer", None, "int8"))


def test_recipe_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, framepack.models.recipe; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
