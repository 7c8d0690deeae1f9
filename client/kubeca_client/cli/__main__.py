"""python -m kubeca_client.cli"""

import sys

from kubeca_client.cli import main

sys.exit(main())
