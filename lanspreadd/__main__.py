import sys

from lanspreadd.main import main

sys.exit(main())
