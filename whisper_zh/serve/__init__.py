"""The serving journey: media -> segmentation -> backends -> engine -> subtitles -> jobs
-> folder jobs, the live microphone and the app. See :mod:`whisper_zh` for the layers."""
