import sys

from hmsa.cli import main

sys.exit(main())
