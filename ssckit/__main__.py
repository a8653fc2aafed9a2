import sys

from ssckit.cli import main

sys.exit(main())
