import sys

from .orchestrator import main

sys.exit(main())
