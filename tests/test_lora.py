"""LoRA fine-tuning (merged at the end, the adapter published too) and 128-mel-bin Whispers
(large-v3's and large-v3-turbo's input) through train -> ct2 -> the engine, on tiny models."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train import kill_at_checkpoint, read_state, tiny_args
from whisper_zh.errors import ConfigError
from whisper_zh.train.checkpoints import find_resumable_checkpoint, is_complete_checkpoint
from whisper_zh.train.config import TrainConfig

LORA = {"lora_r": 4, "learning_rate": 0.01}  # a rate that moves a rank-4 adapter far in a few steps


def card_rows(card_text: str) -> dict:
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", card_text, re.M))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, zh_cv_mini, tiny_whisper):
    from whisper_zh.cli import parse_train_config
    from whisper_zh.train.pipeline import train

    tmp = tmp_path_factory.mktemp("lora")
    config = parse_train_config(tiny_args(zh_cv_mini, tiny_whisper, tmp / "out", tmp / "cache", max_steps=4, **LORA))
    return config, train(config)


def test_lora_options_are_checked_before_any_work(tiny_whisper):
    from whisper_zh.cli import parse_train_config
    from whisper_zh.train.trainer import apply_lora, check_lora, load_model_and_processor

    config = parse_train_config(["--dataset", "x", "--lora-r", "8", "--lora-target-modules", "q_proj,v_proj"])
    assert (config.lora_r, config.lora_modules(), TrainConfig().lora_r) == (8, ["q_proj", "v_proj"], 0)
    for bad in ({"lora_r": -1}, {"lora_r": 8, "lora_dropout": 1.0}, {"lora_r": 8, "lora_target_modules": ","}):
        with pytest.raises(ConfigError):
            check_lora(TrainConfig(dataset="x", **bad))
    model, _ = load_model_and_processor(str(tiny_whisper))
    with pytest.raises(ConfigError, match="qkv_proj not in the model"):
        apply_lora(model, TrainConfig(dataset="x", lora_r=4, lora_target_modules="q_proj,qkv_proj"))
    assert apply_lora(model, TrainConfig(dataset="x")) is model, "lora_r 0 is a full fine-tune"


def test_lora_adapts_every_attention_and_feed_forward_projection(tiny_whisper):
    from whisper_zh.train.trainer import ParameterCount, apply_lora, load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_whisper))
    full = ParameterCount.of(model)
    wrapped = apply_lora(model, TrainConfig(dataset="x", lora_r=4))
    counted = ParameterCount.of(wrapped)
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert any(".encoder." in n for n in trainable) and any(".decoder." in n for n in trainable)
    assert counted.total == full.total + counted.trainable and 0 < counted.share < 0.5
    assert full.share == 1.0


def test_a_lora_run_leaves_a_merged_model_that_decodes_like_base_plus_adapter(lora_run, tiny_whisper, zh_cv_mini):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_zh.media import load_audio

    config, result = lora_run
    out = Path(config.output_dir)
    assert result.global_step == 4
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "results.json", "ct2/model.bin", "ct2/preprocessor_config.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (out / name).exists(), name
    # beside a full model, adapter files would make from_pretrained load an adapter instead
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert not (out / "adapter" / "README.md").exists()
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["base_model_name_or_path"] == tiny_whisper.name
    # the checkpoints are adapters, not models
    checkpoint = Path(find_resumable_checkpoint(str(out)))
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()

    processor = WhisperProcessor.from_pretrained(out)
    clip = load_audio(str(zh_cv_mini / "clips" / sorted(os.listdir(zh_cv_mini / "clips"))[0]))
    features = processor.feature_extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
    decoder_ids = torch.tensor([processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"])])

    def run(model):
        model.eval()
        with torch.no_grad():
            logits = model(input_features=features, decoder_input_ids=decoder_ids).logits
            tokens = model.generate(features, language="zh", task="transcribe", max_new_tokens=12)
        return logits, tokens

    merged_logits, merged_tokens = run(WhisperForConditionalGeneration.from_pretrained(out))
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    base_logits, _ = run(base)
    adapted_logits, adapted_tokens = run(PeftModel.from_pretrained(base, out / "adapter"))
    assert (merged_logits - base_logits).abs().max() > 0.1, "the adapter learned something"
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(merged_tokens, adapted_tokens)


def test_results_and_card_state_the_rank_and_the_trainable_share(lora_run):
    from huggingface_hub import ModelCard

    config, result = lora_run
    out = Path(config.output_dir)
    results = json.loads((out / "results.json").read_text())
    assert results["lora_r"] == 4 and results["lora_alpha"] == 8
    assert results["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert results["trainable_parameters"] == result.parameters.trainable > 0
    assert results["total_parameters"] == result.parameters.total
    assert results["trainable_share"] == pytest.approx(results["trainable_parameters"] / results["total_parameters"])
    assert results["trainable_share"] < 0.5
    card = ModelCard.load(out / "README.md")
    row = card_rows(card.text)["fine-tuning"]
    assert row.startswith("LoRA, rank 4, alpha 8, on q_proj, k_proj, v_proj, out_proj, fc1, fc2: ")
    assert f"{100 * results['trainable_share']:.2f}% of {results['total_parameters'] / 1e6:.1f} M parameters" in row
    assert "`adapter/`" in row and 'subfolder="adapter"' in card.text


def test_a_full_checkpoint_is_not_resumed_as_lora(lora_run, tmp_path):
    from whisper_zh.train.checkpoints import check_resume_kind

    config, _ = lora_run
    adapter_checkpoint = find_resumable_checkpoint(config.output_dir)
    check_resume_kind(adapter_checkpoint, lora=True)
    with pytest.raises(ConfigError, match="LoRA adapter checkpoint and this is a full fine-tune run"):
        check_resume_kind(adapter_checkpoint, lora=False)
    # a half-written adapter is not complete
    broken = tmp_path / "checkpoint-2"
    broken.mkdir()
    for name in os.listdir(adapter_checkpoint):
        data = (Path(adapter_checkpoint) / name).read_bytes() if os.path.isfile(
            os.path.join(adapter_checkpoint, name)) else None
        if data is not None:
            (broken / name).write_bytes(data[: len(data) // 2] if name == "adapter_model.safetensors" else data)
    state = read_state(broken)
    state["global_step"] = 2
    (broken / "trainer_state.json").write_text(json.dumps(state))
    assert not is_complete_checkpoint(str(broken))


def test_a_lora_run_killed_mid_way_resumes_with_each_step_once(tmp_path, zh_cv_mini, tiny_whisper):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "whisper_zh", "train",
           *tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=10, ct2_quantization="", **LORA)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kill_at_checkpoint(cmd, out / "checkpoint-4", tmp_path / "first.log")
    done_step = read_state(find_resumable_checkpoint(str(out)))["global_step"]
    assert 4 <= done_step < 10, "the run must be killed mid-way"

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{done_step}'}" in second.stdout + second.stderr
    final = read_state(find_resumable_checkpoint(str(out)))
    assert final["global_step"] == 10
    assert [e["step"] for e in final["log_history"] if "loss" in e] == list(range(1, 11)), \
        "every step once: none lost, none repeated"
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 10
    assert 0 < json.loads((out / "results.json").read_text())["trainable_share"] < 0.5
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "model.safetensors").exists()


# --- 128 mel bins: large-v3 and large-v3-turbo -------------------------------------------


@pytest.fixture(scope="module")
def tiny_128(whisper_base, tmp_path_factory) -> Path:
    from whisper_zh.testing import make_tiny_whisper

    return Path(make_tiny_whisper(str(tmp_path_factory.mktemp("tiny128") / "tiny-128"), str(whisper_base),
                                  num_mel_bins=128))


def test_a_128_mel_whisper_trains_exports_and_transcribes_through_the_engine(tmp_path, tiny_128, zh_cv_mini):
    from transformers import WhisperConfig, WhisperFeatureExtractor

    from whisper_zh.cli import parse_train_config
    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.types import TranscribeOptions
    from whisper_zh.train.pipeline import train
    from whisper_zh.train.trainer import load_model_and_processor, make_collator

    assert WhisperConfig.from_pretrained(tiny_128).num_mel_bins == 128
    # the collator's batches become 128-bin features in the Trainer, from the model's own filters,
    # equal to its feature extractor's
    from whisper_zh.train.examples import log_mel_spectrogram, mel_filters_of
    from whisper_zh.train.data import prepare_data

    model, processor = load_model_and_processor(str(tiny_128))
    clips = prepare_data(TrainConfig(dataset=str(zh_cv_mini), model_name_or_path=str(tiny_128),
                                     cache_dir=str(tmp_path / "cache"), eval_split="", test_split=""),
                         splits=["train"], verbose=False).train
    batch = make_collator(model, processor)([clips[0], clips[1]])
    features = log_mel_spectrogram(batch["input_audio"], mel_filters_of(processor.feature_extractor))
    assert features.shape == (2, 128, 3000)
    expected = processor.feature_extractor(batch["input_audio"][0].numpy(), sampling_rate=16000,
                                           return_tensors="pt").input_features[0]
    torch.testing.assert_close(features[0], expected, rtol=0, atol=2e-3)

    out = tmp_path / "out"
    result = train(parse_train_config(tiny_args(zh_cv_mini, tiny_128, out, tmp_path / "cache", max_steps=2,
                                                lora_r=4, eval_split="")))
    assert result.global_step == 2
    assert WhisperFeatureExtractor.from_pretrained(out / "ct2").feature_size == 128
    assert WhisperConfig.from_pretrained(out).num_mel_bins == 128

    clip = zh_cv_mini / "clips" / sorted(os.listdir(zh_cv_mini / "clips"))[0]
    options = TranscribeOptions(beam_size=1)
    for backend in ("ct2", "transformers"):  # the app's CPU and GPU paths
        engine = Transcriber(str(out), backend=backend, device="cpu", options=options)
        if backend == "transformers":  # random weights would ramble to 448 tokens, at every fallback temperature
            generate = engine.backend.model.generate
            engine.backend.model.generate = lambda features, **kw: generate(features, **{**kw, "max_new_tokens": 24})
        transcript = engine.transcribe(str(clip))
        assert transcript.duration > 0 and all(s.end >= s.start for s in transcript.segments), backend

    # and the command line, on the exported folder
    run = subprocess.run([sys.executable, "-m", "whisper_zh", "transcribe", str(clip), "--model", str(out),
                          "--srt", str(tmp_path / "clip.srt")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "clip.srt").exists()


def test_the_learning_rate_follows_the_kind_of_run_unless_given(tmp_path, zh_cv_mini, tiny_whisper):
    """No --learning-rate: 1e-5 for a full fine-tune, 1e-4 for LoRA (bench/lora_vs_full.py);
    a given one wins, on the command line and through the notebook's 0 ("the default")."""
    from whisper_zh import notebook as nb
    from whisper_zh.train.config import FULL_LEARNING_RATE, LORA_LEARNING_RATE, TrainConfig
    from whisper_zh.train.trainer import build_training_arguments, plan_training

    assert (FULL_LEARNING_RATE, LORA_LEARNING_RATE) == (1e-5, 1e-4)
    assert TrainConfig().peak_learning_rate == FULL_LEARNING_RATE
    assert TrainConfig(lora_r=32).peak_learning_rate == LORA_LEARNING_RATE
    assert TrainConfig(lora_r=32, learning_rate=3e-4).peak_learning_rate == 3e-4
    lora = nb.make_config(str(tmp_path), str(zh_cv_mini), lora_r=8, learning_rate=0.0)
    assert lora.learning_rate is None and lora.peak_learning_rate == LORA_LEARNING_RATE
    plan = plan_training(lora, n_train=16)
    arguments = build_training_arguments(lora, plan.schedule, plan.precision, plan.gradient_checkpointing)
    assert arguments.learning_rate == LORA_LEARNING_RATE
