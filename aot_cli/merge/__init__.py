"""`aot merge RUN -o OUT`: turn a training run into a plain model directory.

- :mod:`.config`: the options (``Config``) and the checks that need no model;
- :mod:`.run`: fold the adapter into the base (or export a full run), save, verify the logits.
"""
