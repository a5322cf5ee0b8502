import sys

from ringfs.cli import main

sys.exit(main())
