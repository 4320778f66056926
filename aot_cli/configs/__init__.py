"""Files shipped with aot for other tools (package data): ``accelerate/NAME.yaml``, the accelerate launch
configs of docs/distributed.md, found with ``aot configs``."""
