"""Text: Chinese script conversion, scoring normalisation and error rates.

Labels are trained *as written* (punctuation kept); only scoring normalises, and it
normalises both sides the same way, so a model is not penalised for answering in
Traditional characters, full-width digits or with different punctuation:

    >>> normalize("“你好，世界！” 漢語１２３ ABC")
    '你好世界汉语123abc'
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Optional, Sequence

import jiwer

from whisper_zh.errors import ConfigError

# Languages written without spaces between words: scored by CER, not WER.
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "th", "yue", "lo", "my", "km", "bo"})

_CHINESE = frozenset({"zh", "yue"})


@dataclass(frozen=True)
class Script:
    """A way to write Chinese the output can be converted to.

    Attributes:
        name: the value of ``--script`` and of the app's choice.
        label: what the app shows.
        opencc: the OpenCC configuration that converts Simplified text to it; None: the
            text is left as the model wrote it.
    """

    name: str
    label: str
    opencc: Optional[str]


# The one list of script choices: the CLI's --script and the app's radio read it.
SCRIPTS = (
    Script("simplified", "简体 Simplified", "t2s"),
    Script("traditional", "繁體 Traditional", "s2t"),
    Script("taiwan", "臺灣正體 Taiwan", "s2twp"),  # Taiwan characters and phrases: 软件 -> 軟體
    Script("hongkong", "香港繁體 Hong Kong", "s2hk"),  # Hong Kong character forms (OpenCC has no HK phrases)
    Script("original", "原文 As the model wrote it", None),
)
SCRIPT_NAMES = tuple(script.name for script in SCRIPTS)
_SCRIPTS_BY_NAME = {script.name: script for script in SCRIPTS}


@functools.lru_cache(maxsize=None)
def _opencc(config: str):
    import opencc

    return opencc.OpenCC(config)


def to_simplified(text: str) -> str:
    """Traditional -> Simplified Chinese characters (OpenCC ``t2s``)."""
    return _opencc("t2s").convert(text)


def to_traditional(text: str) -> str:
    """Simplified -> Traditional Chinese characters (OpenCC ``s2t``)."""
    return _opencc("s2t").convert(text)


def convert_script(text: str, script: str = "simplified") -> str:
    """Return ``text`` in ``script``, one of :data:`SCRIPT_NAMES`.

    The Traditional scripts start from Simplified text: Whisper writes either, and OpenCC's
    Simplified-to-X tables (Taiwan's phrase table in particular: 軟件 is only rewritten as
    軟體 when it comes from 软件) expect Simplified input.
    """
    if script not in _SCRIPTS_BY_NAME:
        raise ConfigError(f"script must be one of {', '.join(SCRIPT_NAMES)}, not {script!r}")
    config = _SCRIPTS_BY_NAME[script].opencc
    if config is None:
        return text
    if config == "t2s":
        return to_simplified(text)
    return _opencc(config).convert(to_simplified(text))


def _is_punctuation_or_symbol(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"


def normalize(text: str, language: str = "zh", keep_spaces: bool | None = None) -> str:
    """Normalise one transcript for scoring.

    NFKC (full-width -> half-width), Traditional -> Simplified for Chinese, lower case,
    punctuation and symbols removed. Character languages lose all whitespace unless
    ``keep_spaces``; others keep single spaces between words.
    """
    text = unicodedata.normalize("NFKC", text)
    if language in _CHINESE:
        text = to_simplified(text)
    text = "".join(" " if _is_punctuation_or_symbol(c) else c for c in text.lower())
    if keep_spaces is None:
        keep_spaces = language not in CHARACTER_LANGUAGES
    if not keep_spaces:
        return "".join(text.split())
    return " ".join(text.split())


def uses_cer(language: str) -> bool:
    return language in CHARACTER_LANGUAGES


def _pairs(references: Sequence[str], hypotheses: Sequence[str], language: str, keep_spaces=None):
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs, hyps = [], []
    for ref, hyp in zip(references, hypotheses):
        ref = normalize(ref, language, keep_spaces)
        if ref:  # an empty reference has no defined error rate
            refs.append(ref)
            hyps.append(normalize(hyp, language, keep_spaces))
    return refs, hyps


def cer(references: Sequence[str], hypotheses: Sequence[str], language: str = "zh") -> float:
    """Corpus character error rate: total edits / total reference characters, after
    :func:`normalize`. Pairs whose normalised reference is empty are left out."""
    refs, hyps = _pairs(references, hypotheses, language)
    if not refs:
        return float("nan")
    return float(jiwer.cer(refs, hyps))


def wer(references: Sequence[str], hypotheses: Sequence[str], language: str = "en") -> float:
    """Corpus word error rate after :func:`normalize`, spaces kept. The right metric for
    space-delimited languages; for Chinese it counts whole space-separated runs and is
    informative only."""
    refs, hyps = _pairs(references, hypotheses, language, keep_spaces=True)
    if not refs:
        return float("nan")
    return float(jiwer.wer(refs, hyps))


def error_rates(references: Sequence[str], hypotheses: Sequence[str], language: str = "zh") -> dict:
    """{"cer": ..., "wer": ...} plus "error_rate", the one that is right for ``language``."""
    c = cer(references, hypotheses, language)
    w = wer(references, hypotheses, language)
    return {"cer": c, "wer": w, "error_rate": c if uses_cer(language) else w}


def utterance_cer(reference: str, hypothesis: str, language: str = "zh") -> float:
    """CER of a single pair (nan when the normalised reference is empty)."""
    return cer([reference], [hypothesis], language)

