"""The ct2 backend's bfloat16 encoder (``whisper_zh.serve.bf16_encoder``): when it is
chosen, what the export writes for it, and that real whisper-base decodes as well with
it. On any CPU: without AMX the bfloat16 products are slower, not different in kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _checks import is_chinese
from _ct2_base import joined
from _media_helpers import plain_clips
from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import ConfigError, MissingExtraError
from whisper_zh.media import load_audio
from whisper_zh.serve import bf16_encoder
from whisper_zh.serve.bf16_encoder import ENCODER_FILE, BF16Encoder, choose_encoder, cpu_has_amx_bf16
from whisper_zh.serve.ct2_backend import CT2Backend, load_ct2
from whisper_zh.serve.types import TranscribeOptions
from whisper_zh.text import cer


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: {flags}\n")
    return str(path)


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    assert cpu_has_amx_bf16(_cpuinfo(tmp_path, "fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"))
    # AVX-512 BF16 without AMX (e.g. AMD Zen 4) is not counted, nor is amx_tile alone
    assert not cpu_has_amx_bf16(_cpuinfo(tmp_path, "fpu avx512f avx512_bf16 amx_tile"))
    assert not cpu_has_amx_bf16(str(tmp_path / "missing"))


@pytest.fixture
def export_with_encoder(tmp_path) -> Path:
    (tmp_path / "model.bin").write_bytes(b"")
    (tmp_path / ENCODER_FILE).write_bytes(b"")
    return tmp_path


def test_auto_takes_bf16_only_with_amx_and_the_weights(export_with_encoder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(bf16_encoder, "cpu_has_amx_bf16", lambda: True)
    assert choose_encoder("auto", str(export_with_encoder), "cpu") == "bf16"
    assert choose_encoder("auto", str(export_with_encoder), "cuda") == "ct2"
    assert choose_encoder("ct2", str(export_with_encoder), "cpu") == "ct2"
    bare = tmp_path / "bare"
    bare.mkdir()
    with caplog.at_level("INFO", logger="whisper_zh.serve.bf16_encoder"):
        assert choose_encoder("auto", str(bare), "cpu") == "ct2"
    assert ENCODER_FILE in caplog.text  # the log says why

    monkeypatch.setattr(bf16_encoder, "cpu_has_amx_bf16", lambda: False)
    assert choose_encoder("auto", str(export_with_encoder), "cpu") == "ct2"
    # asked for, it runs without AMX (slower there, the same arithmetic)
    assert choose_encoder("bf16", str(export_with_encoder), "cpu") == "bf16"

    monkeypatch.setattr(bf16_encoder, "torch_whisper_installed", lambda: False)
    monkeypatch.setattr(bf16_encoder, "cpu_has_amx_bf16", lambda: True)
    assert choose_encoder("auto", str(export_with_encoder), "cpu") == "ct2"
    with pytest.raises(MissingExtraError, match=r"whisper-zh\[transformers\]"):
        choose_encoder("bf16", str(export_with_encoder), "cpu")


def test_bf16_refuses_what_it_cannot_do(export_with_encoder, tmp_path):
    with pytest.raises(ConfigError, match="encoder must be one of auto, ct2, bf16"):
        choose_encoder("fp8", str(export_with_encoder), "cpu")
    with pytest.raises(ConfigError, match="runs on a CPU"):
        choose_encoder("bf16", str(export_with_encoder), "cuda:0")
    with pytest.raises(ConfigError, match="whisper-zh export"):
        choose_encoder("bf16", str(tmp_path / "nothing"), "cpu")


def test_the_transformers_backend_refuses_an_encoder():
    from whisper_zh.serve.engine import Transcriber

    with pytest.raises(ConfigError, match="option of the ct2 backend"):
        Transcriber("any/model", backend="transformers", device="cpu", encoder="bf16")
    with pytest.raises(ConfigError, match="encoder must be one of"):
        Transcriber("any/model", backend="transformers", device="cpu", encoder="fp8")


@pytest.mark.slow
def test_a_damaged_encoder_file_falls_back_under_auto_and_fails_when_asked_for(whisper_base_ct2, tmp_path,
                                                                                monkeypatch, caplog):
    export = tmp_path / "export"
    export.mkdir()
    for item in whisper_base_ct2.iterdir():
        if item.name != ENCODER_FILE:
            (export / item.name).symlink_to(item.resolve())
    (export / ENCODER_FILE).write_bytes(b"not a safetensors file")
    monkeypatch.setattr(bf16_encoder, "cpu_has_amx_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="whisper_zh.serve.ct2_backend"):
        backend = CT2Backend(str(export))
    assert backend.encoder == "ct2" and backend.encode == backend.model.encode
    assert "does not load" in caplog.text
    with pytest.raises(ConfigError, match="bfloat16 encoder of .* does not load"):
        CT2Backend(str(export), encoder="bf16")


@pytest.mark.slow
def test_the_export_carries_the_encoder_in_bf16(whisper_base_ct2, whisper_base):
    from safetensors import safe_open
    from transformers import WhisperConfig

    path = whisper_base_ct2 / ENCODER_FILE
    assert path.is_file() and oct(path.stat().st_mode & 0o777) == "0o644"
    with safe_open(str(path), framework="pt") as f:
        config = WhisperConfig.from_dict(json.loads(f.metadata()["config"]))
        names = list(f.keys())
        dtypes = {str(f.get_tensor(n).dtype) for n in names}
    assert config.d_model == json.loads((whisper_base / "config.json").read_text())["d_model"]
    assert dtypes == {"torch.bfloat16"}
    assert "conv1.weight" in names and "layer_norm.weight" in names
    assert not any(n.startswith(("decoder.", "model.decoder")) for n in names)  # the encoder only
    assert not list(whisper_base_ct2.glob(".*.tmp"))


def test_the_export_reads_the_encoder_from_the_checkpoint_alone(tiny_whisper, tmp_path, monkeypatch):
    """The encoder's weights come straight from a safetensors checkpoint, one file or
    shards, without building the model a second time; a ``pytorch_model.bin`` is loaded."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from whisper_zh.serve import models

    model = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper))
    expected = model.get_encoder().state_dict()
    sharded, legacy = tmp_path / "sharded", tmp_path / "legacy"
    model.save_pretrained(str(sharded), max_shard_size="1MB")
    model.save_pretrained(str(legacy))
    (legacy / "model.safetensors").unlink()  # the checkpoint of older releases
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    assert (sharded / "model.safetensors.index.json").is_file() and (legacy / "pytorch_model.bin").is_file()

    def no_second_model(*args, **kwargs):
        raise AssertionError("the model was built again")

    with monkeypatch.context() as patched:
        patched.setattr(WhisperForConditionalGeneration, "from_pretrained", no_second_model)
        for source in (tiny_whisper, sharded):
            weights, config = models._encoder_weights(str(source))
            assert set(weights) == set(expected)
            assert all(torch.equal(weights[name], expected[name]) for name in expected)
            assert json.loads(config)["d_model"] == model.config.d_model
        with pytest.raises(AssertionError, match="built again"):
            models._encoder_weights(str(legacy))
    weights, _ = models._encoder_weights(str(legacy))
    assert all(torch.equal(weights[name], expected[name]) for name in expected)

    written = models.write_bf16_encoder(str(sharded), str(tmp_path))
    encoder = BF16Encoder(str(tmp_path))  # what the backend loads from it
    assert written == str(tmp_path / ENCODER_FILE)
    assert torch.equal(encoder.encoder.conv1.weight, expected["conv1.weight"].to(torch.bfloat16))


@pytest.mark.slow
def test_a_cached_conversion_gains_the_encoder_file(whisper_base, whisper_base_ct2, monkeypatch):
    """A conversion cached before the file existed gets it on its next load, on a CPU
    that would use it."""
    from whisper_zh.serve import models
    from whisper_zh.serve.models import resolve_ct2_model

    monkeypatch.setattr(models, "cpu_has_amx_bf16", lambda: True)

    path = whisper_base_ct2 / ENCODER_FILE
    kept = path.read_bytes()
    path.unlink()
    try:
        assert Path(resolve_ct2_model(str(whisper_base))) == whisper_base_ct2
        assert path.is_file() and path.stat().st_size == len(kept)
    finally:
        if not path.is_file():
            path.write_bytes(kept)


@pytest.mark.slow
def test_bf16_encoder_output_matches_ctranslate2s(whisper_base_ct2, zh_cv_mini):
    """The encoder's output for real speech agrees with CTranslate2's float32 encoder of the
    same export frame by frame (cosine similarity; measured here: mean 0.999, 99.8 % of
    the frames above 0.95; against CTranslate2's int8 a few frames fall to 0.5 whichever
    side rounds). A wrong encoder (weights, positions, norms) is far below these margins."""
    import ctranslate2

    model = ctranslate2.models.Whisper(str(whisper_base_ct2), compute_type="float32")
    rows = plain_clips(zh_cv_mini, 4)
    audio = joined([load_audio(zh_cv_mini / "clips" / row["path"]) for row in rows])[: 30 * SAMPLE_RATE]
    window = np.pad(audio, (0, 30 * SAMPLE_RATE - len(audio)))
    features = load_ct2(str(whisper_base_ct2)).feature_extractor(window)[None, :, :3000].astype(np.float32)
    ours = np.asarray(BF16Encoder(str(whisper_base_ct2))(features))
    theirs = np.asarray(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features))))
    assert ours.shape == theirs.shape == (1, 1500, 512) and ours.dtype == np.float32
    speech_frames = int(len(audio) / SAMPLE_RATE * 50)
    a, b = ours[0, :speech_frames], theirs[0, :speech_frames]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.mean() > 0.99 and (cosine > 0.95).mean() > 0.95, (cosine.mean(), np.quantile(cosine, 0.05))


@pytest.mark.slow
def test_bf16_encoder_transcribes_real_mandarin(whisper_base_ct2, zh_cv_mini):
    """Eight real clips joined, decoded with the bfloat16 encoder asked for: every clip has
    text over it, the text is Chinese, and the CER has the margin of the ct2 backend's own
    test (whisper-base scores about 0.15 on these; 0.5 is a broken encoder)."""
    backend = CT2Backend(str(whisper_base_ct2), encoder="bf16")
    assert backend.encoder == "bf16" and isinstance(backend.encode, BF16Encoder)
    rows = plain_clips(zh_cv_mini, 8)
    clips = [load_audio(zh_cv_mini / "clips" / row["path"]) for row in rows]
    audio = joined(clips)
    segments = list(backend.iter_segments(audio, TranscribeOptions()))
    text = "".join(s.text for s in segments)
    assert is_chinese(text)
    assert cer(["".join(row["sentence"] for row in rows)], [text]) < 0.5
    start = 0
    for clip in clips:  # no clip without a segment over it
        end = start + len(clip) / SAMPLE_RATE
        assert any(min(s.end, end) - max(s.start, start) >= 0.3 for s in segments), (start, end)
        start = end + 0.5


def test_the_encoder_setting_reaches_the_engine_from_the_edges(tiny_whisper, zh_cv_mini, capsys):
    """ENCODER (the app's setting) and --encoder (the command line) choose the ct2 backend's
    encoder; the library never reads the environment itself."""
    from whisper_zh.cli import main as cli_main
    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.settings import ServeSettings

    settings = ServeSettings.from_env({"ENCODER": " CT2 "})
    assert settings.encoder == "ct2" and ServeSettings.from_env({}).encoder == "auto"
    engine = Transcriber(str(tiny_whisper), backend="ct2", device="cpu", encoder=settings.encoder)
    assert engine.backend.encoder == "ct2" and engine.backend.encode == engine.backend.model.encode

    clip = str(next((zh_cv_mini / "clips").iterdir()))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["transcribe", clip, "--encoder", "fp8"])
    assert exit_.value.code == 2 and "--encoder" in capsys.readouterr().err
    assert cli_main(["transcribe", clip, "--model", str(tiny_whisper), "--backend", "transformers",
                     "--device", "cpu", "--encoder", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("encoder='bf16' is an option of the ct2 backend, not of transformers"), err
