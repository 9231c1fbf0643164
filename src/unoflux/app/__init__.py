"""``unoflux app``: a local Gradio web app over the same generation API as ``unoflux generate``.

- :mod:`.runner` turns one form submission into saved PNGs and a reproducing CLI command (no Gradio);
- :mod:`.command` builds that ``unoflux generate ...`` command line;
- :mod:`.ui` lays out the page and wires it to the runner (``build_app``, ``launch``);
- :mod:`.cli` registers the ``unoflux app`` subcommand.

Importing this package does not import Gradio or torch, so ``unoflux -h`` stays fast.
"""
