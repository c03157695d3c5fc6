import sys

from cirtutor.cli import main

sys.exit(main())
