"""`aot inspect DATA`: a dataset as training will see it (a dry run; writes nothing).

- :mod:`.config`: the options (``Config``), with ``aot train``'s length defaults;
- :mod:`.run`: the templated examples, token lengths, truncation and template notes.
"""
