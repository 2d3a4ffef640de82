"""``kiln-builder``: the program a build Job runs (never imports kopf).

It reads a :class:`kiln.contract.task.BuildTask`, downloads the weights, converts and builds them
(``tensorrt``) or prepares them (``pytorch``), verifies the result, uploads it to the store
(the manifest last) and leaves a JSON summary or a structured error in the termination log.
"""
