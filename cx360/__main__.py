"""``python -m cx360`` is the ``cx360`` command."""
import sys

from cx360.pipelines.cli import main

sys.exit(main())
