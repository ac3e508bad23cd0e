"""python -m pymda.admin"""

import sys

from pymda.admin.commands import main

sys.exit(main())
