"""The demo (``bin/demo``, ``dihya-demo``): the whole system on this machine, and the sample
receiver it (and the tests) deliver to.

Not a service: nothing under ``services/`` imports it. The process launcher it uses is
:mod:`launcher`; the documentation generators are :mod:`docgen`.
"""
