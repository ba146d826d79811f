"""The command line's modes, one small file each, on top of the libraries.

A mode reads its typed settings (`jaxdiff.settings`), calls the libraries
(`jaxdiff.trained`, `jaxdiff.inverse`, `jaxdiff.classifier`, ...) and writes
files. `jaxdiff/run.py` lists them; nothing below this package imports it.
"""
