import sys

from defi.cli import main

sys.exit(main())
