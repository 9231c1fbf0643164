"""DreamO: its checkpoints in their official layouts (every file kind, a wrong key, a wrong shape), the T5
placeholders, each task's embeddings checked against a hand-written forward, CFG's negative pass without references
or embeddings, DreamO's schedule and noise, batch > 1, preprocessing and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from unoflux import UnofluxError, flow, load_pipeline
from unoflux.checkpoints import ModelPaths
from unoflux.checkpoints.dreamo import PLACEHOLDERS, add_placeholders, dreamo_lora_to_diffusers
from unoflux.checkpoints.files import read_tensors, write_safetensors
from unoflux.cli import main
from unoflux.conditioning import grid_position_ids, sequence_position_ids
from unoflux.methods import get_method
from unoflux.methods.dreamo import DreamOEmbeddings, DreamOMethod, resize_to_area
from unoflux.references import Reference
from unoflux.testing import save_dreamo_layout, tiny_components, tiny_pipeline

from .conftest import random_image
from .test_methods import hand_written_forward

SMALL = dict(width=32, height=32, num_inference_steps=1, seed=3, max_sequence_length=16, reference_long_side=32)


@pytest.fixture(scope="module")
def dreamo_files(tmp_path_factory):
    return save_dreamo_layout(tiny_components(seed=0), tmp_path_factory.mktemp("dreamo"))


def dreamo_paths(files, turbo=True) -> ModelPaths:
    paths, folder = files
    return ModelPaths(**{**vars(paths), "dreamo": str(folder), "turbo": paths.turbo if turbo else None})


@pytest.fixture(scope="module")
def dreamo_pipe(dreamo_files):
    pipe = load_pipeline(dreamo_paths(dreamo_files), device="cpu", dtype="fp32", use_environment=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def refs():
    return [random_image(48, 40, seed=1), random_image(32, 32, seed=2)]


# -------------------------------------------------------------------------------------------- loading
def test_every_file_kind_loads_with_dreamos_weights_and_defaults(dreamo_pipe, dreamo_files):
    """v1.1 + turbo: dreamo 1, cfg 1, turbo 1, sft 1, dpo 1.25; v1 without turbo: quality_pos 0.15, quality_neg -0.8;
    defaults as DreamO's app (1024 px, 12 steps with turbo / 25 without, guidance 4.5 / 3.5)."""
    assert dreamo_pipe.get_active_adapters() == ["dreamo", "cfg", "turbo", "sft", "dpo"]
    layer = dreamo_pipe.transformer.transformer_blocks[0].attn.to_q
    assert {a: layer.scaling[a] for a in layer.scaling} == {"dreamo": 1, "cfg": 1, "turbo": 1, "sft": 1, "dpo": 1.25}
    d = dreamo_pipe.model_defaults
    assert (d["method"], d["width"], d["steps"], d["guidance"]) == ("dreamo", 1024, 12, 4.5)
    v1 = load_pipeline(
        dreamo_paths(dreamo_files, turbo=False), device="cpu", dtype="fp32", use_environment=False, dreamo_version="v1"
    )
    assert v1.get_active_adapters() == ["dreamo", "cfg", "quality_pos", "quality_neg"]
    layer = v1.transformer.single_transformer_blocks[0].proj_out
    assert layer.scaling["quality_pos"] == 0.15 and layer.scaling["quality_neg"] == -0.8
    assert (v1.model_defaults["steps"], v1.model_defaults["guidance"]) == (25, 3.5)


def test_dreamos_lora_layout_converts_as_its_converter_does(dreamo_files):
    """One down matrix shared by q, k and v; the up matrix split in three equal row blocks; proj parts as they are."""
    state, _ = read_tensors(dreamo_files[1] / "dreamo_cfg_distill.safetensors")
    lora = dreamo_lora_to_diffusers(state, "x")
    down, up = (
        state["double_blocks_0.processor.qkv_lora2.down.weight"],
        state["double_blocks_0.processor.qkv_lora2.up.weight"],
    )
    for k, name in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
        assert torch.equal(lora[f"transformer.transformer_blocks.0.attn.{name}.lora_A.weight"], down)
        assert torch.equal(lora[f"transformer.transformer_blocks.0.attn.{name}.lora_B.weight"], up.chunk(3)[k])
    proj = state["single_blocks_0.processor.proj_lora.up.weight"]
    assert torch.equal(lora["transformer.single_transformer_blocks.0.proj_out.lora_B.weight"], proj)
    assert len(lora) == 2 * (4 * 1 + 4 * 1 + 4 * 1)  # 1 double block: q k v + out + add q k v + add_out; 1 single


def test_fused_equals_adapters(dreamo_files, dreamo_pipe, refs):
    fused = load_pipeline(dreamo_paths(dreamo_files), device="cpu", dtype="fp32", use_environment=False, fuse_lora=True)
    fused.set_progress_bar_config(disable=True)
    assert not fused.get_active_adapters()
    a = dreamo_pipe("a [ref#1] cup", refs[:1], output_type="latent", **SMALL).images
    b = fused("a [ref#1] cup", refs[:1], output_type="latent", **SMALL).images
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_every_misfit_of_dreamos_files_is_one_sentence(dreamo_files, tmp_path):
    paths, folder = dreamo_files
    main_state, _ = read_tensors(folder / "dreamo.safetensors")

    def folder_with(edit) -> str:
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        for f in folder.rglob("*.safetensors"):
            target = bad / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
        state = dict(main_state)
        edit(state)
        write_safetensors(state, bad / "dreamo.safetensors")
        return str(bad)

    def load(dreamo: str):
        return load_pipeline(ModelPaths(**{**vars(paths), "dreamo": dreamo, "turbo": None}), device="cpu",
                             use_environment=False)  # fmt: skip

    cases = {
        "has 'double_blocks_0.processor.qkv_lora1.middle.weight', which is not DreamO's layout": lambda s: s.update(
            {"double_blocks_0.processor.qkv_lora1.middle.weight": torch.zeros(1)}
        ),
        "has 'dreamo_task_embedding.weight' of shape (3, 32), expected (2, 32)": lambda s: s.update(
            {"dreamo_task_embedding.weight": torch.zeros(3, 32)}
        ),
        "has no 'dreamo_idx_embedding.weight'": lambda s: s.pop("dreamo_idx_embedding.weight"),
        "takes 16 inputs but": lambda s: s.update(
            {"double_blocks_0.processor.proj_lora1.down.weight": torch.zeros(4, 16)}
        ),
    }
    for message, edit in cases.items():
        with pytest.raises(UnofluxError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load(folder_with(edit))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnofluxError, match="lacks dreamo.safetensors, dreamo_cfg_distill.safetensors, v1.1/"):
        load(str(tmp_path / "empty"))
    with pytest.raises(UnofluxError, match="--turbo is DreamO's turbo LoRA; it needs --dreamo DIR"):
        load_pipeline(ModelPaths(**{**vars(paths), "dreamo": None}), device="cpu", use_environment=False)


def test_placeholders_get_dreamos_ids_and_rows_after_the_t5_shrink():
    """FLUX's T5 has 32128 embedding rows for a 32100-token tokenizer: DreamO first shrinks to the tokenizer, so the
    placeholders get ids len(tokenizer) + 0..9 and the rows it stores."""
    pipe = tiny_pipeline()
    n = len(pipe.tokenizer_2)
    pipe.text_encoder_2.resize_token_embeddings(n + 28)  # the FLUX T5's spare rows
    rows = torch.randn(10, pipe.text_encoder_2.config.d_model)
    ids = add_placeholders(pipe, rows)
    assert ids == list(range(n, n + 10)) and pipe.text_encoder_2.get_input_embeddings().weight.shape[0] == n + 10
    torch.testing.assert_close(pipe.text_encoder_2.get_input_embeddings().weight[n:], rows)
    assert pipe.tokenizer_2("the [ref#2] cat [res]").input_ids[1] == n + 1 and PLACEHOLDERS[-1] == "[res]"
    assert add_placeholders(pipe, rows) == ids  # loading twice adds nothing


# ------------------------------------------------------------------------------------------- sampling
def one_step_by_hand(pipe, prompt, images, embeddings_rows, cfg=None):
    """The first Euler step of DreamO's sampler written out: fp32 noise from a seeded CPU generator, the target's
    and references' tokens with their embeddings after x_embedder (hand_written_forward), sigma 1 -> 0."""
    text, pooled, text_ids = pipe.encode_prompt(prompt=[prompt], prompt_2=None, max_sequence_length=16)
    noise = torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(3))  # diffusers' prepare_latents
    x = noise.view(1, 16, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 4, 64)
    tokens = [pipe.encode_pixels(torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1)[None],
                                 torch.float32) for im in images]  # fmt: skip
    grids = [(im.height // 16, im.width // 16) for im in images]
    hidden = torch.cat([x, *tokens], dim=1)
    ids = sequence_position_ids((2, 2), grids, "diagonal")
    guidance = torch.full((1,), 4.5)
    with torch.no_grad():
        v = hand_written_forward(pipe.transformer, hidden, torch.ones(1), guidance, pooled, text, text_ids, ids,
                                 embeddings_rows[None], torch.zeros(1, 0, 32))[:, :4]  # fmt: skip
        if cfg is not None:
            negative, scale = cfg
            neg_text, neg_pooled, _ = pipe.encode_prompt(prompt=[negative], prompt_2=None, max_sequence_length=16)
            v_neg = hand_written_forward(pipe.transformer, x, torch.ones(1), guidance, neg_pooled, neg_text, text_ids,
                                         grid_position_ids(2, 2), torch.zeros(1, 1, 32), torch.zeros(1, 0, 32))  # fmt: skip
            v = v_neg + scale * (v - v_neg)
    return flow.euler_step(x, v, 1.0, 0.0)


def test_task_and_index_embeddings_follow_the_slots(dreamo_pipe, refs):
    """A face in slot 1 and a garment (subject) in slot 2 (try-on): target tokens + task[1]; slot k's tokens +
    task[0] + idx[k], whatever the task (DreamO's task index is 0 for every task)."""
    emb = dreamo_pipe.dreamo_embeddings
    face = random_image(32, 32, seed=5)
    images = [face, refs[0].resize((32, 16))]
    out = dreamo_pipe("[ref#1] wears [ref#2]", [Reference(face, "id"), Reference(images[1])], time_shift=1.0,
                      output_type="latent", **SMALL)  # fmt: skip
    rows = torch.cat([emb.task[1].expand(4, -1), (emb.task[0] + emb.index[1]).expand(4, -1),
                      (emb.task[0] + emb.index[2]).expand(2, -1)])  # fmt: skip
    expected = one_step_by_hand(dreamo_pipe, "[ref#1] wears [ref#2]", images, rows)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
    # the roles only change preprocessing: as subjects in the same slots, the same tokens and embeddings
    same = dreamo_pipe("[ref#1] wears [ref#2]", images, time_shift=1.0, output_type="latent", **SMALL).images
    torch.testing.assert_close(same, out.images, atol=0, rtol=0)
    swapped = dreamo_pipe("[ref#1] wears [ref#2]", images[::-1], time_shift=1.0, output_type="latent", **SMALL).images
    assert not torch.allclose(swapped, out.images, atol=1e-4)  # slots matter


def test_text_only_still_adds_the_target_embedding_and_style_is_a_slot(dreamo_pipe, refs):
    emb = dreamo_pipe.dreamo_embeddings
    out = dreamo_pipe("a cup", time_shift=1.0, output_type="latent", **SMALL).images
    torch.testing.assert_close(out, one_step_by_hand(dreamo_pipe, "a cup", [], emb.task[1].expand(4, -1)), atol=1e-5,
                               rtol=0)  # fmt: skip
    style = refs[1]
    out = dreamo_pipe("generate a same style image. a cup", [Reference(style, "style")], time_shift=1.0,
                      output_type="latent", **SMALL).images  # fmt: skip
    rows = torch.cat([emb.task[1].expand(4, -1), (emb.task[0] + emb.index[1]).expand(4, -1)])
    torch.testing.assert_close(out, one_step_by_hand(dreamo_pipe, "generate a same style image. a cup", [style], rows),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_true_cfgs_negative_pass_sees_no_reference_and_no_embedding(dreamo_pipe, refs):
    emb = dreamo_pipe.dreamo_embeddings
    image = refs[1]
    out = dreamo_pipe("a cup", [image], true_cfg_scale=2.5, negative_prompt="blurry", time_shift=1.0,
                      output_type="latent", **SMALL).images  # fmt: skip
    rows = torch.cat([emb.task[1].expand(4, -1), (emb.task[0] + emb.index[1]).expand(4, -1)])
    torch.testing.assert_close(out, one_step_by_hand(dreamo_pipe, "a cup", [image], rows, cfg=("blurry", 2.5)),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_dreamos_schedule_is_diffusers_on_the_target_tokens_and_first_step_guidance(dreamo_pipe, refs):
    """sigmas = linspace(1, 1/N, N) shifted with mu from the target's token count (references do not count), as
    FlowMatchEulerDiscreteScheduler.set_timesteps does; the first step's guidance input is its own."""
    out = dreamo_pipe("a cup", refs[:1], output_type="latent", **{**SMALL, "num_inference_steps": 4, "width": 64})
    assert out.settings["schedule"] == "flux" and out.settings["time_shift"] is None
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dreamo_pipe.scheduler.config)
    mu = flow.schedule_mu(8, flow.ShiftConfig.from_scheduler_config(scheduler.config))  # 2 x 4 target tokens
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=mu)
    torch.testing.assert_close(flow.sigmas(4, mu).double(), scheduler.sigmas.double(), atol=1e-6, rtol=0)
    seen = []
    handle = dreamo_pipe.transformer.time_text_embed.register_forward_pre_hook(lambda m, a: seen.append(a[1][0].item()))
    try:
        dreamo_pipe("a cup", first_step_guidance=2.0, **{**SMALL, "num_inference_steps": 3})
    finally:
        handle.remove()
    assert seen == [2000.0, 4500.0, 4500.0]  # guidance x 1000 inside the transformer


def test_batches_and_several_images_per_prompt(dreamo_pipe, refs):
    """DreamO's own pipeline breaks here; image j of every prompt is the single run with seed + j."""
    both = dreamo_pipe(["a cup", "a dog"], refs[:1], num_images=2, output_type="latent", **SMALL)
    assert both.images.shape == (4, 4, 64) and both.seeds == [3, 4, 3, 4]
    alone = dreamo_pipe("a dog", refs[:1], output_type="latent", **{**SMALL, "seed": 4}).images
    torch.testing.assert_close(both.images[3:], alone, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- preprocessing
def test_preprocessing_resizes_subjects_and_styles_to_an_area_and_crops_faces():
    method = get_method("dreamo")
    big, face = Image.new("RGB", (1000, 600), "red"), Image.new("RGB", (520, 512), "blue")
    subject, style, crop = method.preprocess_references(
        [Reference(big), Reference(big, "style"), Reference(face, "id")], 512
    )
    k = (512 * 512 / (1000 * 600)) ** 0.5
    assert subject.image.size == style.image.size == (int(1000 * k) // 16 * 16, int(600 * k) // 16 * 16)
    assert crop.image.size == (512, 512) and crop.role == "id"
    ready = Image.new("RGB", (512, 512))
    assert resize_to_area(ready, 512) is ready  # already preprocessed: untouched
    with pytest.raises(UnofluxError, match="DreamO takes at most 9 references, not 10"):
        method.check([Reference(big)] * 10)
    marked = type(method)(preprocessors={"subject": lambda im: im.crop((0, 0, 600, 600))})
    assert marked.preprocess_references([Reference(big)], 512)[0].image.size == (512, 512)


def test_a_model_that_declares_its_reference_sizes_gets_them_as_with_uno(dreamo_pipe):
    """A model trained at declared reference sizes (unoflux.json's reference_long_side, evaluate's --ref-long-side:
    the world's DreamO runs, trained at 128 / 80 px) gets them; DreamO's ref_res 512 only where none are declared
    (FLUX.1-dev with ByteDance's DreamO). Before, DreamO gave 512 x 512 references to models trained at 80 x 80."""
    method = get_method("dreamo")
    one, two = [Reference(Image.new("RGB", (128, 128)))], [Reference(Image.new("RGB", (128, 128)))] * 2
    assert dreamo_pipe.reference_long_sides is None and method.reference_side(dreamo_pipe, two) == 512
    dreamo_pipe.reference_long_sides = (32, 16)
    try:
        assert (method.reference_side(dreamo_pipe, one), method.reference_side(dreamo_pipe, two)) == (32, 16)
        images = [random_image(40, 40, seed=1), random_image(40, 40, seed=2)]
        out = dreamo_pipe("[ref#1] and [ref#2]", images, output_type="latent", **{**SMALL, "reference_long_side": None})
        assert out.settings["reference_long_side"] == 16
    finally:
        dreamo_pipe.reference_long_sides = None


def test_dreamo_without_its_checkpoint_is_an_error(tiny_pipe):
    with pytest.raises(UnofluxError, match="method 'dreamo' needs DreamO's checkpoint: pass --dreamo DIR"):
        tiny_pipe("a cup", method="dreamo", **SMALL)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_try_on_with_a_face_and_a_garment(dreamo_files, tmp_path, refs):
    paths, folder = dreamo_files
    refs[0].save(tmp_path / "shirt.png")
    Image.new("RGB", (32, 32), "white").save(tmp_path / "face.png")
    out = tmp_path / "o.png"
    flags = ["--flux", paths.flux, "--ae", paths.ae, "--t5", paths.t5, "--clip", paths.clip, "--device", "cpu"]
    argv = ["generate", "--prompt", "[ref#1] wears [ref#2]", "--id", str(tmp_path / "face.png"), "--ref",
            str(tmp_path / "shirt.png"), "--width", "32", "--height", "32", "--out", str(out)]  # fmt: skip
    pre = tmp_path / "pre"
    assert main([*argv, *flags, "--dreamo", str(folder), "--turbo", paths.turbo, "--save-preprocessed", str(pre)]) == 0
    k = (512 * 512 / (48 * 40)) ** 0.5  # the garment at DreamO's ref_res 512; the face as it is
    assert Image.open(pre / "ref1_id.png").size == (32, 32)
    assert Image.open(pre / "ref2_subject.png").size == (int(48 * k) // 16 * 16, int(40 * k) // 16 * 16)
    settings = json.loads(Image.open(out).text["unoflux"])
    assert settings["references"] == [{"image": str(tmp_path / "face.png"), "role": "id"}, str(tmp_path / "shirt.png")]
    assert (settings["method"], settings["steps"], settings["schedule"]) == ("dreamo", 12, "flux")
    assert settings["model"]["dreamo"] == str(folder) and settings["model"]["dreamo_version"] == "v1.1"


def test_the_apps_task_per_slot_reaches_the_pipeline(dreamo_pipe, tmp_path, refs, monkeypatch):
    pytest.importorskip("gradio")
    from unoflux.app.runner import AppRunner
    from unoflux.app.ui import make_generate

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the files below are uploads: in Gradio's upload cache

    refs[0].save(tmp_path / "shirt.png")
    Image.new("RGB", (32, 32), "white").save(tmp_path / "face.png")
    generate = make_generate(AppRunner(dreamo_pipe, {"model": "tiny-dreamo"}, tmp_path / "out"))
    images, command, *_ = generate(
        "[ref#1] wears [ref#2]",
        {"path": str(tmp_path / "face.png")},
        {"path": str(tmp_path / "shirt.png")},
        width=32,
        height=32,
        steps=None,  # the model's: DreamO's turbo 12
        seed=3,
        task_1="id",
        progress=lambda *a, **k: None,
    )
    settings = json.loads(Image.open(images[0]).text["unoflux"])
    assert settings["steps"] == 12
    face, shirt = settings["references"]
    assert face["role"] == "id" and isinstance(shirt, str) and "_id1" in face["image"]
    assert f"--id {face['image']} --ref {shirt}" in command


CELEBAMASK_HQ = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                 "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]  # fmt: skip


def save_tiny_face_parser(folder) -> None:
    """A tiny random Segformer with CelebAMask-HQ's labels, as transformers' face-parsing models are published."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], patch_sizes=[7], strides=[4],
        num_attention_heads=[1], mlp_ratios=[2], decoder_hidden_size=8, num_labels=len(CELEBAMASK_HQ),
        id2label=dict(enumerate(CELEBAMASK_HQ)), label2id={n: i for i, n in enumerate(CELEBAMASK_HQ)},
    )  # fmt: skip
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)


def test_the_face_parser_and_background_remover_paint_what_dreamo_paints_white(dreamo_files, tmp_path):
    from unoflux.checkpoints.dreamo import load_background_remover, load_face_parser
    from unoflux.methods.dreamo import FACE_PARSING_WHITE

    save_tiny_face_parser(tmp_path / "parser")
    parser = load_face_parser(tmp_path / "parser")
    face = random_image(48, 48, seed=9)
    labels = parser.labels(face).numpy()
    white = np.isin(labels, [CELEBAMASK_HQ.index(n) for n in FACE_PARSING_WHITE])
    assert 0 < white.mean() < 1  # the random model paints some pixels, not all (else the test shows nothing)
    painted = np.asarray(parser(face))
    assert (painted[white] == 255).all() and (painted[~white] == np.asarray(face)[~white]).all()
    # through the pipeline: --face-parser applies it to id references only, before the crop to 16
    paths, folder = dreamo_files
    pipe = load_pipeline(
        ModelPaths(
            **{
                **vars(paths),
                "dreamo": str(folder),
                "turbo": None,
                "face_parser": str(tmp_path / "parser"),
                "background_remover": str(tmp_path / "parser"),
            }
        ),  # fmt: skip
        device="cpu",
        use_environment=False,
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe("[ref#1] and [ref#2]", [Reference(face, "id"), face], **SMALL)
    parsed, subject = out.references
    assert np.array_equal(np.asarray(parsed.image), painted[:48, :48])
    remover = load_background_remover(tmp_path / "parser")  # subjects: the background alone becomes white
    background = parser.labels(face).numpy() == 0
    no_background = np.asarray(remover(face))
    assert (no_background[background] == 255).all() and (
        no_background[~background] == np.asarray(face)[~background]
    ).all()
    assert np.array_equal(np.asarray(subject.image), np.asarray(resize_to_area(remover(face), 32)))
    with pytest.raises(UnofluxError, match="must be a transformers model folder with config.json"):
        load_face_parser(tmp_path)


def save_tiny_face_detector(folder) -> None:
    """A tiny random DETR with one "face" label, as transformers' detection models are published."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    torch.manual_seed(0)
    backbone = dict(model_type="resnet", num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 8, 8],
                    depths=[1, 1, 1, 1], out_features=["stage4"])  # fmt: skip
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, id2label={0: "face"},
                        label2id={"face": 0})  # fmt: skip
    model = DetrForObjectDetection(config)
    with torch.no_grad():  # confident that there is no face: nothing passes the default threshold 0.5
        model.class_labels_classifier.bias.copy_(torch.tensor([-4.0, 4.0]))
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(folder)


def test_the_face_detector_crops_the_best_face_square_and_a_faceless_image_is_an_error(dreamo_files, tmp_path):
    from unoflux.checkpoints.dreamo import load_face_detector
    from unoflux.methods.dreamo import FaceCrop

    save_tiny_face_detector(tmp_path / "detector")
    strict = load_face_detector(tmp_path / "detector")  # threshold 0.5: the random model finds no face
    photo = random_image(80, 60, seed=11)
    with pytest.raises(UnofluxError, match="no face found in a 80x60 id reference"):
        strict(photo)
    paths, folder = dreamo_files
    pipe = load_pipeline(
        ModelPaths(
            **{**vars(paths), "dreamo": str(folder), "turbo": None, "face_detector": str(tmp_path / "detector")}
        ),
        device="cpu",
        use_environment=False,
    )
    with pytest.raises(UnofluxError, match=r"reference 1 \(id\): no face found"):
        pipe("[ref#1]", [Reference(photo, "id")], **SMALL)  # before any model runs on it: one sentence

    lenient = FaceCrop(strict.model, strict.processor, threshold=0.0, size=64)
    x0, y0, x1, y1 = lenient.box(photo)
    side = 1.7 * max(x1 - x0, y1 - y0)
    left, top = round((x0 + x1) / 2 - side / 2), round((y0 + y1) / 2 - side / 2)
    canvas = Image.new("RGB", (round((x0 + x1) / 2 + side / 2) - left, round((y0 + y1) / 2 + side / 2) - top), "white")
    canvas.paste(photo, (-left, -top))
    expected = canvas.resize((64, 64), Image.BICUBIC)
    assert np.array_equal(np.asarray(lenient(photo)), np.asarray(expected))


def test_training_entry_adds_the_given_embeddings_as_inference_does():
    """Training's conditioning (references already encoded) uses the embeddings the method is given: the target's
    tokens get task[1], reference k's get task[0] + index[k]; without embeddings it is refused, not embedding-free."""
    with pytest.raises(UnofluxError, match="training with method 'dreamo' needs its trainable embeddings"):
        get_method("dreamo").conditioning((2, 2), None, [], "diagonal")
    g = torch.Generator().manual_seed(0)
    task, index = torch.randn(2, 8, generator=g), torch.randn(10, 8, generator=g)
    method = DreamOMethod(embeddings=DreamOEmbeddings(task=task, index=index))
    tokens = torch.randn(1, 3, 64, generator=g)
    cond = method.conditioning((2, 2), tokens, [(1, 2), (1, 1)], "diagonal")
    expected = torch.stack([task[1]] * 4 + [task[0] + index[1]] * 2 + [task[0] + index[2]])[None]
    assert torch.equal(cond.token_embeddings, expected) and cond.reference_tokens is tokens
    assert torch.equal(cond.image_ids, sequence_position_ids((2, 2), [(1, 2), (1, 1)], "diagonal"))


def test_method_files_are_checked_before_the_base_model_loads(tmp_path):
    """A typo in a method's path is one sentence at once, not after minutes of loading FLUX (here the FLUX file
    does not even exist: the method's check comes first)."""
    (tmp_path / "empty").mkdir()
    base = dict(flux=str(tmp_path / "no-flux.safetensors"), ae="x", t5="x", clip="x")
    cases = {
        "lacks dreamo.safetensors": dict(dreamo=str(tmp_path / "empty")),
        "--face-parser": dict(face_parser=str(tmp_path / "empty")),
        "USO projector file": dict(projector=str(tmp_path / "p.safetensors"), siglip=str(tmp_path / "empty")),
    }
    for message, extra in cases.items():
        with pytest.raises(UnofluxError, match=message):
            load_pipeline(ModelPaths(**base, **extra), device="cpu", use_environment=False)


def test_dreamos_true_cfg_window_and_negative_guidance(dreamo_pipe, refs):
    """true_cfg_start/end: CFG only on steps in [start, end) (DreamO's app: 0, 0 = never); negative_guidance: the
    negative branch's own guidance input (DreamO's neg_guidance_scale)."""
    common = dict(output_type="latent", **{**SMALL, "num_inference_steps": 3})
    plain = dreamo_pipe("a cup", refs[:1], **common).images
    never = dreamo_pipe("a cup", refs[:1], true_cfg_scale=2.5, negative_prompt="x", true_cfg_end=0, **common).images
    torch.testing.assert_close(never, plain, rtol=0, atol=0)
    seen = []
    handle = dreamo_pipe.transformer.time_text_embed.register_forward_pre_hook(lambda m, a: seen.append(a[1][0].item()))
    try:
        dreamo_pipe("a cup", refs[:1], true_cfg_scale=2.5, negative_prompt="x", true_cfg_start=1, true_cfg_end=2,
                    negative_guidance=3.5, **common)  # fmt: skip
    finally:
        handle.remove()
    assert seen == [4500.0, 3500.0, 4500.0, 4500.0]  # step 0: positive only; step 1: negative, positive; step 2
