import sys

from lanspreadd.app.main import main

sys.exit(main())
