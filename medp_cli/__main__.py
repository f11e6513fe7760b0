"""``python -m medp_cli ...`` is the ``medp`` command."""

import sys

from . import main

sys.exit(main())
