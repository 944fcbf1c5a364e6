import sys

from walkeeper.entry import main

sys.exit(main())
