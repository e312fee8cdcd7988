"""YouTube-8M toolkit package.

The scripts use flat imports (``import readers``) so that ``python train.py``
works from the repository root.  When the folder is imported as a package
(``python -m youtube-8m.train``, which is what ``gcloud --package-path`` does,
or after ``pip install .``) this file puts the folder itself on ``sys.path`` so
those flat imports resolve to the same modules.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
