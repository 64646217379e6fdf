"""The training journey: configuration -> data -> examples -> trainer -> checkpoints ->
evaluate -> publish -> the pipeline. See :mod:`whisper_zh` for the layers."""
