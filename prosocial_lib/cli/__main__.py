"""``python -m prosocial_lib.cli``: the same as the ``prosocial`` command."""

import sys

from . import main

sys.exit(main())
