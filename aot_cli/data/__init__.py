"""Preference data: read sources, recognize their shape, normalize, apply operations, save.

``sources`` reads files, directories, hub ids and prepared datasets; ``formats`` recognizes the
eight common shapes and normalizes them to TRL-compatible columns; ``operations`` binarizes,
unpairs, labels, cleans and splits; ``dataset`` reads a prepared dataset back for later steps.
"""
