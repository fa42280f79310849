import sys

from lanspreadctl.cli import main

sys.exit(main())
