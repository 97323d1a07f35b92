"""Train the model: compose conf/ into params.yaml, then `dvc repro` (only changed stages run).

usage: python src/train.py [HYDRA_OVERRIDE ...]

  python src/train.py                              run the pipeline with conf/ as it is
  python src/train.py model.learning_rate=0.1      change a parameter for this run
  python src/train.py model=lightgbm seed=7        pick a config group option, set a value

Overrides use Hydra's syntax (https://hydra.cc/docs/advanced/override_grammar/basic/). Unknown
keys and wrongly typed values are rejected before anything runs. The composed configuration is
written to params.yaml, which every stage reads and DVC tracks.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tabml.train_cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], usage=__doc__))
