"""``python -m deeppneumonia.cli`` (e.g. under torchrun)."""

import sys

from deeppneumonia.cli import main

sys.exit(main())
