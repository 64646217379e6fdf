"""Scoring normalisation and error rates on hand-written cases."""

import math

import pytest

from whisper_zh.text import cer, convert_script, error_rates, normalize, uses_cer, utterance_cer, wer


@pytest.mark.parametrize("raw, expected", [
    ("漢語說話", "汉语说话"),                       # Traditional -> Simplified
    ("你好，世界！", "你好世界"),                    # full-width punctuation removed
    ("“他说：‘好。’”", "他说好"),                   # quotes of both widths
    ("１２３ＡＢＣ", "123abc"),                      # full-width digits and letters -> half-width, lower
    ("今天 天气\t很好\n", "今天天气很好"),             # whitespace removed for Chinese
    ("GDP增长了百分之5.2%", "gdp增长了百分之52"),       # symbols and the decimal point go too
    ("", ""),
])
def test_normalize_chinese(raw, expected):
    assert normalize(raw, "zh") == expected


def test_normalize_keeps_word_spaces_for_english():
    assert normalize("Hello,  World!", "en") == "hello world"


def test_traditional_answer_scores_zero_against_simplified_reference():
    assert cer(["我们的国家很大"], ["我們的國家很大。"]) == 0.0


def test_cer_counts_character_edits_over_reference_length():
    # one substitution (天 -> 田) and one deletion (好) over 6 reference characters
    assert cer(["今天天气很好"], ["今田天气很"]) == pytest.approx(2 / 6)


def test_cer_is_corpus_level_not_mean_of_utterances():
    refs, hyps = ["一二", "三四五六七八"], ["一", "三四五六七八"]
    assert cer(refs, hyps) == pytest.approx(1 / 8)
    assert utterance_cer("一二", "一") == pytest.approx(0.5)


def test_full_width_digits_match_half_width():
    assert cer(["２０２４年"], ["2024年"]) == 0.0


def test_empty_references_are_left_out_and_all_empty_is_nan():
    assert cer(["，", "你好"], ["什么", "你好"]) == 0.0
    assert math.isnan(cer(["。"], ["你好"]))


def test_wer_for_space_delimited_language():
    assert wer(["the cat sat"], ["the cat sat down"], "en") == pytest.approx(1 / 3)


def test_error_rates_pick_cer_for_character_languages():
    assert uses_cer("zh") and uses_cer("ja") and not uses_cer("en")
    rates = error_rates(["天气很好"], ["天气不好"], "zh")
    assert rates["error_rate"] == rates["cer"] == pytest.approx(0.25)
    assert error_rates(["a b"], ["a c"], "en")["error_rate"] == pytest.approx(0.5)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        cer(["a"], [])


def test_convert_script_both_ways():
    assert convert_script("汉语", "traditional") == "漢語"
    assert convert_script("漢語", "simplified") == "汉语"
    assert convert_script("漢語", "original") == "漢語"
    with pytest.raises(ValueError, match="taiwan"):
        convert_script("x", "klingon")


def test_script_choices_are_defined_once():
    from whisper_zh.text import SCRIPT_NAMES, SCRIPTS

    assert SCRIPT_NAMES == ("simplified", "traditional", "taiwan", "hongkong", "original")
    assert [s.opencc for s in SCRIPTS] == ["t2s", "s2t", "s2twp", "s2hk", None]
    assert all(s.label for s in SCRIPTS)


@pytest.mark.parametrize("simplified, taiwan", [
    ("软件", "軟體"),          # Taiwan's own words (phrase table), not just characters
    ("鼠标", "滑鼠"),
    ("出租车司机", "計程車司機"),
    ("我买了一个U盘", "我買了一個隨身碟"),  # the length can change
    ("网络信息", "網路資訊"),
    ("里面", "裡面"),          # Taiwan's character forms: 裡, not 裏
])
def test_taiwan_script_uses_taiwan_phrases(simplified, taiwan):
    assert convert_script(simplified, "taiwan") == taiwan
    # the model may have written Traditional already: same result
    assert convert_script(convert_script(simplified, "traditional"), "taiwan") == taiwan


def test_hong_kong_script_uses_hong_kong_character_forms():
    assert convert_script("里面为什么", "hongkong") == "裏面為什麼"  # HK: 為, where OpenCC's s2t gives 爲
    assert convert_script("里面为什么", "traditional") == "裏面爲什麼"
    assert convert_script("软件", "hongkong") == "軟件"  # no phrase table for Hong Kong in OpenCC
    assert convert_script("軟件", "original") == "軟件"
