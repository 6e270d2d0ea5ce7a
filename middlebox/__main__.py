import sys

from middlebox.cli import main

sys.exit(main())
