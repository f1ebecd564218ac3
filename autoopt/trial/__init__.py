"""Run one trial in a worker process: the worker (parent and child sides), a candidate's build (model-level knobs,
then the runtime), its timing, accuracy and serving memory; the training step; int8 layer sensitivity."""
