"""Tasks: ViDoRe selections, local BEIR folders and the generated offline task, as mteb tasks."""

import harness  # noqa: F401  (the torchvision fix runs before anything imports torchvision)
