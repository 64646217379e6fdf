"""Checks on real model output that hold whatever the CPU's arithmetic: what the model
writes is compared with what the same engine writes for the same audio at temperature 0
(decoding with temperature fallback samples without a seed), or only checked to be
Chinese. Accuracy is bench/'s and ``whisper-zh evaluate``'s, or a corpus CER with a wide
margin."""

from __future__ import annotations

import re
from dataclasses import replace

from whisper_zh.text import normalize

HAN = re.compile("[\u4e00-\u9fff]")
GREEDY = (0.0,)  # one temperature: no sampled retries


def is_chinese(text: str) -> bool:
    """Something was written, and most of it is Han characters (whatever they are)."""
    shown = normalize(text)
    return bool(shown) and len(HAN.findall(shown)) >= len(shown) / 2


class Greedy:
    """An engine that decodes at temperature 0 whatever options its caller builds (the
    app's handlers build their own): the same audio always gives the same text."""

    def __init__(self, inner):
        self.inner = inner

    def iter_segments(self, audio, options=None, **kwargs):
        return self.inner.iter_segments(audio, replace(options or self.inner.options, temperatures=GREEDY), **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)
