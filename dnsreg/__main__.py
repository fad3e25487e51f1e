import sys

from dnsreg.cli import main

sys.exit(main())
