"""`aot prepare`: any common preference-data shape in, one normalized dataset artifact out.

- :mod:`.config`: the options (``Config``) and the checks that need no data (``preflight``);
- :mod:`.shape`: which shape the source is, and whether the options fit it;
- :mod:`.run`: the pipeline (read, normalize, binarize or label, clean, split, unpair, save) on top
  of the data layer :mod:`aot_cli.data`.
"""
