"""Small real-shaped models for tests, benchmarks and the notebook's CI run.

A *tiny* Whisper has Whisper's exact interface (the real multilingual tokenizer,
feature extractor and generation config, 80 mel bins, 30 s windows) with random
weights and a few hundred thousand parameters, so the whole pipeline runs in
seconds on a CPU. It decodes nothing meaningful: accuracy is tested with the real
whisper-base instead.
"""

from __future__ import annotations

import os


def make_tiny_whisper(out_dir: str, processor_from: str, *, d_model: int = 64, layers: int = 2,
                      seed: int = 0) -> str:
    """Write a randomly initialised Whisper to ``out_dir``, borrowing the tokenizer,
    feature extractor and generation config of ``processor_from`` (a Whisper Hub id or
    directory). Returns ``out_dir``; does nothing if it is already complete."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    if os.path.exists(os.path.join(out_dir, "model.safetensors")):
        return out_dir
    processor = WhisperProcessor.from_pretrained(processor_from)
    reference = WhisperConfig.from_pretrained(processor_from)
    config = WhisperConfig(
        vocab_size=reference.vocab_size,
        num_mel_bins=reference.num_mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=reference.max_source_positions,
        max_target_positions=reference.max_target_positions,
        pad_token_id=reference.pad_token_id,
        bos_token_id=reference.bos_token_id,
        eos_token_id=reference.eos_token_id,
        decoder_start_token_id=reference.decoder_start_token_id,
        suppress_tokens=reference.suppress_tokens,
        begin_suppress_tokens=reference.begin_suppress_tokens,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(processor_from)
    # the reference's cross-attention heads for word timing name layers this model lacks
    # (CTranslate2 crashes on them): use every head of the last decoder layer
    model.generation_config.alignment_heads = [[layers - 1, head] for head in range(config.decoder_attention_heads)]
    tmp = out_dir + ".tmp"
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, out_dir) if not os.path.exists(out_dir) else _move_into(tmp, out_dir)
    return out_dir


def _move_into(src: str, dst: str) -> None:
    import shutil

    for name in os.listdir(src):
        os.replace(os.path.join(src, name), os.path.join(dst, name))
    shutil.rmtree(src)
