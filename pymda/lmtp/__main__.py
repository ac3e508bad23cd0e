"""python -m pymda.lmtp"""

import sys

from pymda.lmtp.main import main

sys.exit(main())
