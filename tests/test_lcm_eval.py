"""Text-to-image evaluation: `distill eval RUN --captions FOLDER --clip DIR` on a smoke LCM-LoRA run, with a tiny
random CLIP saved to disk (nothing downloaded); the CLIP score is checked against CLIP's own embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _latent import diffusers  # noqa: F401  (skips without the latent extra)
from test_lcm_fit import caption_folder

from distill.cli import main as distill_main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from teachers.sd_components import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=len(tok), max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tok)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_clip_score_is_100_times_the_cosine(tiny_clip):
    from distill.evaluation.clip_score import clip_score, load_clip, to_uint8

    model, processor = clip = load_clip(tiny_clip)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    captions = ["a red cat", "a dog", "the sea 7"]
    inputs = processor(text=captions, images=list(to_uint8(images)), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(img, txt)
    assert clip_score(images, captions, clip) == pytest.approx(float((100 * cos).clamp_min(0).mean()), rel=1e-4)


@pytest.mark.slow  # a smoke fit and the evaluation: ~25 s on an idle 2-core machine
def test_eval_captions_reports_fid_and_clip_score_for_student_and_teacher(tmp_path, tiny_clip, capsys):
    run = tmp_path / "run"
    assert distill_main(["fit", str(RECIPES / "sd15_lcm_lora.yaml"), "run.smoke=true", f"run.dir={run}"]) == 0
    folder = caption_folder(tmp_path / "caps", count=6)
    out = tmp_path / "report.json"
    assert distill_main(["eval", str(run), "--captions", str(folder), "--clip", str(tiny_clip), "--steps", "1,2,4",
                         "--teacher-nfe", "3", "--num", "6", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["student"]) == {"1", "2", "4"} and set(rep["teacher"]) == {"3"} and rep["num_samples"] == 6
    for entry in [*rep["student"].values(), *rep["teacher"].values()]:
        assert entry["fid"] > 0 and 0 <= entry["clip_score"] <= 100
    assert rep["guidance"] == 8.5 and rep["features"] == "pixel"
    bad = distill_main(["eval", str(run), "--captions", str(folder), "--steps", "12", "--out", str(out)])
    assert bad == 2 and "1-8 steps" in capsys.readouterr().err
