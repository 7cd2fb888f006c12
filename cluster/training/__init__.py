"""Training the parts of the reference model that can be trained on CPU from synthesised data.

- `turn_corpus`: sentences (training grammar, held-out evaluation sentences) and voice splits;
- `turn_synth`: espeak-ng and flite synthesis in a fresh process (so the audio does not depend on
  what the calling process synthesised before) with a fast polyphase resampler;
- `turn_scenes`: what a microphone adds: levels, rooms, backgrounds, the telephone band;
- `turn_data`: dialogue streams, features by the engine's own `DMelFeaturizer`, per-frame labels;
- `turn_trainer`: `microturn train turns`: train, calibrate on other voices, write a checkpoint;
- `turn_eval`: the tick engine on unseen voices and sentences, per turn policy.
"""
