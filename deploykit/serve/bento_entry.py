"""The bento's entry point (bentofile.yaml's ``service``): deploykit's service on the packed artifact.

A relative ``DEPLOYKIT_ARTIFACT`` (the bentofile sets ``artifact``) is resolved against the
build context's root, the folder holding ``deploykit/`` (a bento's ``src/``, or the checkout),
not against the working directory: the image's working directory is the bento's root, and
``bentoml serve TAG`` on a host does not apply the bento's envs at all. An absolute path
serves another artifact.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
os.environ["DEPLOYKIT_ARTIFACT"] = str(_ROOT / (os.environ.get("DEPLOYKIT_ARTIFACT") or "artifact"))

from deploykit.serve.service import Classifier  # noqa: E402,F401
