"""python -m pymda.policy"""

import sys

from pymda.policy.main import main

sys.exit(main())
