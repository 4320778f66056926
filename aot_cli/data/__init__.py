"""Preference data: read sources, recognize their shape, normalize, apply operations, save.

``sources`` reads files, directories, hub ids and prepared datasets; ``formats`` recognizes the
eight common shapes and normalizes single rows to TRL-compatible columns; ``normalize`` applies
that to whole splits; ``operations`` binarizes, unpairs, labels, cleans and splits; ``dataset``
defines the saved schema and reads a prepared dataset back for later steps; ``tokenize`` turns
rows into token ids exactly as training sees them.
"""
