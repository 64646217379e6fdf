"""whisper-zh: fine-tune OpenAI Whisper for Mandarin Chinese, and serve it.

The modules follow the data's journey:

* training: ``data`` (Common Voice / datasets in, compact cache out) -> ``text``
  (normalisation, CER) -> ``features`` (log-mel in the collator) -> ``train``
  (Seq2SeqTrainer, resume, Hub) -> ``evaluate``;
* serving: ``media`` (decode, download) -> ``transcribe`` (long-form engine,
  subtitles) -> ``app`` (Gradio).
"""

__version__ = "0.1.0"
